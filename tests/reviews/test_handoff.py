"""reviews:handoff and reviews:handoff-download."""

import pytest
from django.urls import reverse

from reviews import halo
from reviews.models import Optimization

from .optimization_builders import finished_optimization, halo_cycle

pytestmark = pytest.mark.django_db

REPORT = """I read the traces first.

## Executive summary
The harness cites sources well; the gate **failed** 3 of 5.

## Top 3 changes to implement first
1. **Roll customer concentration up to parent accounts.** Northstar Holdings.
2. **State exact certification status.** Type I vs Type II.
3. **Prefer the controlled ARR bridge.**

## Ranked recommendation table
| Rank | Recommendation |
|---|---|
| 1 | Parent rollup |

## Supporting diagnosis and evidence
Evidence.

## Detailed recommendations
### Behavior contract
#### Prompt
Add the rule.

## Insights by feedback source
| Feedback source | Key insights |
|---|---|
| Human feedback | Roll up to parents. <script>alert(1)</script> |

## Machine-readable summary
```json
{"top_priorities": [{"rank": 1}]}
```
"""


@pytest.fixture
def optimization(approver):
    return finished_optimization(halo_cycle(approver), REPORT)


def test_it_shows_the_snapshot_and_the_full_report_sanitised(client_for, reviewer, optimization):
    response = client_for(reviewer).get(reverse("reviews:handoff", args=[optimization.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    summary = html[html.index('data-testid="handoff-summary"'):html.index('data-testid="handoff-full"')]
    assert "<h2>Top 3 changes to implement first</h2>" in summary
    assert "<strong>Roll customer concentration up to parent accounts.</strong>" in summary
    assert "<h2>Insights by feedback source</h2>" in summary and "<td>Human feedback</td>" in summary
    assert "Executive summary" not in summary and "Ranked recommendation table" not in summary
    full = html[html.index('data-testid="handoff-full"'):]
    for section in halo.REQUIRED_SECTIONS:
        assert f"<h2>{section[3:]}</h2>" in full
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "I read the traces first." in full  # the raw output, escaped in a <details>
    assert reverse("reviews:handoff-download", args=[optimization.pk]) in html
    assert 'data-testid="missing-sections"' not in html


def test_missing_sections_are_named_on_the_handoff(client_for, reviewer, approver):
    optimization = finished_optimization(halo_cycle(approver), "## Executive summary\nShort.\n",
                                         missing=["## Machine-readable summary"])
    html = client_for(reviewer).get(reverse("reviews:handoff", args=[optimization.pk])).content.decode()
    assert 'data-testid="missing-sections"' in html and "<code>## Machine-readable summary</code>" in html


def test_the_download_is_the_cleaned_handoff(client_for, engineer, optimization):
    response = client_for(engineer).get(reverse("reviews:handoff-download", args=[optimization.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="codex_handoff.md"'
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    assert text == optimization.handoff and text.startswith("## Executive summary")
    assert halo.check_sections(text) == []


def test_an_outsider_gets_403(client_for, outsider, optimization):
    client = client_for(outsider)
    assert client.get(reverse("reviews:handoff", args=[optimization.pk])).status_code == 403
    assert client.get(reverse("reviews:handoff-download", args=[optimization.pk])).status_code == 403


def test_a_run_without_a_handoff_is_404(client_for, reviewer, approver):
    failed = finished_optimization(halo_cycle(approver), "", status=Optimization.Status.FAILED, error="boom")
    assert client_for(reviewer).get(reverse("reviews:handoff", args=[failed.pk])).status_code == 404
    assert client_for(reviewer).get(reverse("reviews:handoff-download", args=[failed.pk])).status_code == 404


def test_the_halo_page_links_the_handoff(client_for, reviewer, optimization):
    html = client_for(reviewer).get(reverse("reviews:halo", args=[optimization.cycle_id])).content.decode()
    assert reverse("reviews:handoff", args=[optimization.pk]) in html
