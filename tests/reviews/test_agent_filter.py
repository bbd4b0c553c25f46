"""The cycles list and the suite page (and its download) filter by agent."""

import pytest
from django.utils import timezone

from reviews.models import Cycle, EvalCase
from runs.models import Agent

from .builders import make_cycle, make_run
from .test_cycle_from_traces import imported

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_agents(engineer, approver):
    """(external agent, its cycle, built-in cycle), each cycle with one approved case."""
    agent = Agent.create_external(by=engineer, name="Support bot")[0]
    run = imported(agent, "1" * 32)
    external = Cycle.objects.create_from_runs(runs=[run], name="Support bot cycle", user=engineer)
    builtin = make_cycle(make_run(), name="Analyst cycle")
    for cycle, eval_id in ((external, "support-case"), (builtin, "analyst-case")):
        EvalCase.objects.create(cycle=cycle, eval_id=eval_id, title=f"Title {eval_id}", source_run=cycle.runs.get(),
                                rubric="Pass when it is right.", status=EvalCase.Status.APPROVED, approved_by=approver,
                                approved_at=timezone.now())
    return agent, external, builtin


def test_the_cycles_list_filters_by_agent(client_for, reviewer, two_agents):
    agent, external, builtin = two_agents
    client = client_for(reviewer)
    everything = client.get("/cycles/").content.decode()
    assert external.name in everything and builtin.name in everything
    only = client.get(f"/cycles/?agent={agent.slug}").content.decode()
    assert external.name in only and builtin.name not in only
    analyst = client.get(f"/cycles/?agent={Agent.builtin().slug}").content.decode()
    assert builtin.name in analyst and external.name not in analyst
    assert builtin.name in client.get("/cycles/?agent=no-such-agent").content.decode()  # ignored, not an error


def test_the_suite_and_its_download_filter_by_agent(client_for, reviewer, two_agents):
    agent, external, builtin = two_agents
    ours, theirs = external.eval_cases.get(), builtin.eval_cases.get()
    client = client_for(reviewer)
    page = client.get(f"/suite/?agent={agent.slug}").content.decode()
    assert f'data-testid="suite-row-{ours.pk}"' in page and f'data-testid="suite-row-{theirs.pk}"' not in page
    assert "Active (1)" in page and f"suite/promptfoo.yaml?agent={agent.slug}" in page
    assert f'data-testid="suite-row-{theirs.pk}"' in client.get("/suite/").content.decode()
    download = client.get(f"/suite/promptfoo.yaml?agent={agent.slug}").content.decode()
    assert "support-case" in download and "analyst-case" not in download
