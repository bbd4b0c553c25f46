"""The evidence beside the feedback form (reviews.trace.evidence_html): rendered once per version of a
finished run and served from the "evidence" cache to every reader, never stale."""

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from reviews.trace import evidence_html
from runs.models import Artifact, Run, Span

from .builders import make_cycle, make_run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache():
    caches["evidence"].clear()
    yield
    caches["evidence"].clear()


def test_a_finished_runs_evidence_is_rendered_once_and_then_read_from_the_cache():
    run = make_run()
    first = evidence_html(run)
    assert 'id="span-root' in first and 'data-artifact="investment_memo.md"' in first and 'id="answer"' in first
    again = Run.objects.get(pk=run.pk)
    with CaptureQueriesContext(connection) as queries:
        second = evidence_html(again)
    assert second == first
    assert len(queries) == 2  # the fingerprint's two aggregates; no span, artifact or template query


def test_new_spans_artifacts_or_a_new_answer_show_at_once():
    run = make_run()
    evidence_html(run)
    Span.objects.create(run=run, position=2, span_id="latecomer", name="late span", observation_kind="TOOL",
                        data={"span_id": "latecomer", "name": "late span", "attributes": {}})
    assert 'id="span-latecomer"' in evidence_html(Run.objects.get(pk=run.pk))
    Artifact.objects.create(run=run, name="extra_notes.md", content="# Notes\n", size=8)
    assert 'data-artifact="extra_notes.md"' in evidence_html(Run.objects.get(pk=run.pk))
    Run.objects.filter(pk=run.pk).update(final_answer="A different answer altogether.")
    assert "A different answer altogether." in evidence_html(Run.objects.get(pk=run.pk))


def test_a_running_runs_evidence_is_not_cached():
    run = make_run()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, finished_at=None)
    evidence_html(Run.objects.get(pk=run.pk))
    assert not caches["evidence"]._cache  # nothing stored while the run still changes


def test_both_review_pages_show_the_cached_evidence(client_for, reviewer, approver, engineer):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    review = client_for(reviewer).get(reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])).content.decode()
    approve = client_for(approver).get(reverse("reviews:run-approve", args=[cycle.pk, run.pk])).content.decode()
    for body in (review, approve):
        assert 'id="trace-panel"' in body and 'id="span-tool' in body and 'data-artifact="investment_memo.md"' in body


def test_every_artifact_line_has_an_anchor_citations_point_at(client_for, reviewer, engineer):
    run = make_run()  # investment_memo.md = "# Memo\n\nRunway is 11 months.\nThe company has 122% official NRR.\n"
    html = evidence_html(run)
    assert ('<span class="line" id="artifact-investment-memo-md-L4"><span class="ln" aria-hidden="true">4</span>'
            "The company has 122% official NRR.\n</span>") in html
    assert 'id="artifact-investment-memo-md-L5"' not in html  # the final newline ends line 4, it is not a line
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    rows = (("prohibited_claim", "No official NRR", "", "investment_memo.md", "4"),)
    from .builders import form_data

    client = client_for(reviewer)
    client.post(reverse("reviews:feedback-edit", args=[cycle.pk, run.pk]), form_data(rows=rows),
                HTTP_HX_REQUEST="true")
    page = client.get(reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])).content.decode()
    assert f'class="cite-link" href="/runs/{run.pk}/#artifact-investment-memo-md-L4"' in page
