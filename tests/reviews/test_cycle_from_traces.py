"""Cycles from an external agent's imported runs: by version and time range (the cycles page), or picked
by hand; back-tests of an imported case look only at the same agent's runs of the same input."""

from datetime import datetime, timezone as dt_timezone

import pytest

from reviews.backtest import other_reviewed_runs
from reviews.models import Cycle, EvalCase, Feedback
from runs.ingest import lines_from_otlp_json, store_lines
from runs.models import Agent, Harness, Run
from tests.runs.otlp_builders import openinference_trace, request

from .builders import make_feedback, make_run
from .gen_builders import approve

pytestmark = pytest.mark.django_db

URL = "/cycles/new/from-traces/"


def imported(agent, trace_id: str, *, version="1.0.0", question="Do you ship to Canada?", day: int = 1) -> Run:
    lines, rejected = lines_from_otlp_json(request(openinference_trace(trace_id, question=question), version=version))
    assert rejected == []
    store_lines(agent=agent, lines=lines)
    run = Run.objects.get(agent=agent, trace_id=trace_id)
    Run.objects.filter(pk=run.pk).update(started_at=datetime(2026, 11, day, 12, tzinfo=dt_timezone.utc))
    return run


@pytest.fixture
def agent(engineer):
    return Agent.create_external(by=engineer, name="Support bot")[0]


def test_a_cycle_takes_the_versions_runs_in_the_time_range(client_for, engineer, agent):
    early, late = imported(agent, "1" * 32, day=1), imported(agent, "2" * 32, day=20)
    imported(agent, "3" * 32, version="2.0.0", day=10)  # another version
    make_run()  # a built-in run
    harness = Harness.objects.get(agent=agent, agent_version="1.0.0")
    page = client_for(engineer).get("/cycles/").content.decode()
    assert "Support bot · 1.0.0" in page and "Support bot · 2.0.0" in page

    response = client_for(engineer).post(URL, {"harness": harness.pk, "since": "2026-11-15T00:00"})
    cycle = Cycle.objects.get()
    assert response.status_code == 302 and response["Location"] == cycle.get_absolute_url()
    assert list(cycle.runs.all()) == [late] and cycle.harness == harness
    assert cycle.name.startswith("Support bot 1.0.0 · ")

    client_for(engineer).post(URL, {"harness": harness.pk, "name": "All of 1.0.0"})
    assert set(Cycle.objects.get(name="All of 1.0.0").runs.all()) == {early, late}


@pytest.mark.parametrize("data, message", [
    ({"harness": ""}, "Choose the agent version whose imported runs to review."),
    ({"harness": "999999"}, "Choose one of the listed agent versions."),
    ({"since": "yesterday"}, "From: enter a date and time"),
    ({"since": "2026-11-10T00:00", "until": "2026-11-01T00:00"}, "To: choose a time after From."),
    ({"since": "2026-12-01T00:00"}, "No finished imported run of that version falls in that time range."),
])
def test_bad_input_is_named_and_creates_nothing(client_for, engineer, agent, data, message):
    imported(agent, "1" * 32)
    harness = Harness.objects.get(agent=agent)
    response = client_for(engineer).post(URL, {"harness": harness.pk, **data})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Cycle.objects.exists()


def test_reviewers_cannot_create_one(client_for, reviewer, agent):
    imported(agent, "1" * 32)
    response = client_for(reviewer).post(URL, {"harness": Harness.objects.get(agent=agent).pk})
    assert response.status_code == 403 and not Cycle.objects.exists()


def test_imported_runs_can_be_picked_by_hand(client_for, engineer, agent):
    runs = [imported(agent, "1" * 32), imported(agent, "2" * 32, question="Other?")]
    response = client_for(engineer).post("/cycles/new/", {"name": "Picked", "runs": [run.pk for run in runs]})
    assert response.status_code == 302
    assert set(Cycle.objects.get(name="Picked").runs.all()) == set(runs)


def test_with_the_agent_filter_the_picking_list_holds_that_agents_runs_beyond_the_newest_overall(
        client_for, engineer, agent, monkeypatch):
    from reviews.forms import NewCycleForm

    monkeypatch.setattr(NewCycleForm, "RECENT", 3)
    old = imported(agent, "1" * 32)
    newer_builtin = [make_run() for _ in range(3)]  # the 3 newest runs overall are the built-in agent's
    client = client_for(engineer)
    def choice(run):
        return f'name="runs" value="{run.pk}"'

    everyone = client.get("/cycles/").content.decode()
    assert choice(old) not in everyone and all(choice(run) in everyone for run in newer_builtin)

    filtered = client.get(f"/cycles/?agent={agent.slug}").content.decode()
    assert choice(old) in filtered and choice(newer_builtin[0]) not in filtered
    assert "Support bot 1.0.0 · " in filtered and f'name="agent" value="{agent.slug}"' in filtered

    # The form carries the agent, so its POST checks the choices it showed.
    response = client.post("/cycles/new/", {"name": "Old one", "agent": agent.slug, "runs": [old.pk]})
    assert response.status_code == 302 and list(Cycle.objects.get(name="Old one").runs.all()) == [old]
    refused = client.post("/cycles/new/", {"name": "Wrong", "agent": agent.slug, "runs": [newer_builtin[0].pk]})
    assert refused.status_code == 200 and "is not one of the available choices" in refused.content.decode()
    assert not Cycle.objects.filter(name="Wrong").exists()


def test_a_back_test_compares_only_the_same_agents_runs_of_the_same_input(engineer, reviewer, approver, agent):
    other_agent = Agent.create_external(by=engineer, name="Other bot")[0]
    source, same = imported(agent, "1" * 32), imported(agent, "2" * 32)
    foreign = imported(other_agent, "3" * 32)  # the same input text, so the same Question row
    assert source.question_id == same.question_id == foreign.question_id
    for run in (source, same, foreign):
        cycle = Cycle.objects.create(harness=run.harness, name=f"cycle {run.pk}")
        cycle.runs.set([run])
        make_feedback(cycle, run, reviewer, status=Feedback.Status.SUBMITTED)
        approve(cycle, run, approver)
    case = EvalCase.objects.create(cycle=source.cycles.get(), eval_id="ship", source_run=source, rubric="Ships?")
    assert [run for run, _ in other_reviewed_runs(case)] == [same]


def test_the_gate_matches_a_new_versions_imported_runs_to_the_cases_by_input(engineer, agent):
    from reviews.gate import match_runs

    shipping, refunds = imported(agent, "1" * 32), imported(agent, "2" * 32, question="Refunds?")
    cycle = Cycle.objects.create_from_runs(runs=[shipping, refunds], name="1.0.0", user=engineer)
    cases = [EvalCase.objects.create(cycle=cycle, eval_id=f"case-{run.pk}", source_run=run, rubric="Right?")
             for run in (shipping, refunds)]
    candidate = imported(agent, "3" * 32, version="2.0.0")  # the same input as `shipping`, no refunds run
    matched = match_runs(cases, [candidate])
    assert matched == {cases[0].pk: candidate, cases[1].pk: None}
