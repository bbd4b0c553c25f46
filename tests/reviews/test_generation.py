"""The insights -> evals chain, end to end against the offline stand-in model."""

import pytest
from django.core.exceptions import PermissionDenied

from loopsite.models import AuditEvent
from reviews import generation
from reviews.generation import GenerationError, request_generation
from reviews.models import Cycle, EvalCase, Feedback, GenerationJob, Insight
from loopsite.standin.faults import UNKNOWN_TRACE_ID

from .gen_builders import approve, approved_cycle, content_of, no_broker, reviewed_cycle, run_chain

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_calls(monkeypatch):
    """Counts the model calls the chain makes (still sent to the stand-in)."""
    calls = []
    real = generation._respond

    def counting(**kwargs):
        calls.append(kwargs["messages"])
        return real(**kwargs)

    monkeypatch.setattr(generation, "_respond", counting)
    return calls


def _feedback_state(cycle):
    return sorted((fb.pk, fb.status, fb.version, repr(content_of(fb))) for fb in Feedback.objects.filter(cycle=cycle))


def test_the_last_approval_queues_the_chain_once_committed(reviewer, approver, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    cycle, runs = reviewed_cycle(reviewer)
    with no_broker(monkeypatch) as sent:
        with django_capture_on_commit_callbacks(execute=True):
            for run in runs[:4]:
                approve(cycle, run, approver)
        assert sent == []
        assert not GenerationJob.objects.exists()
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            approve(cycle, runs[4], approver)
    job = GenerationJob.objects.get()
    assert job.kind == GenerationJob.Kind.INSIGHTS and job.status == GenerationJob.Status.QUEUED
    assert job.requested_by == approver
    assert sent == [("reviews.generate_insights", job.pk)]
    assert len(callbacks) >= 1
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.REVIEWED  # "Generating evals" once a worker runs the step
    assert cycle.generation_requested_by == approver
    assert AuditEvent.objects.filter(action="generation.request", object_id=str(cycle.pk)).count() == 1


def test_reapproving_an_approved_run_does_not_start_another_chain(reviewer, approver, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    cycle, runs = approved_cycle(reviewer, approver)
    job = GenerationJob.objects.get()
    job.status = GenerationJob.Status.SUCCEEDED
    job.save()
    merged = Feedback.objects.get(cycle=cycle, run=runs[0], is_merged=True)
    content = {**content_of(merged), "summary": "Edited after approval."}
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        from reviews.models import approve_run

        approve_run(cycle=cycle, run=runs[0], by=approver, content=content, version=merged.version)
    assert sent == []
    assert GenerationJob.objects.count() == 1


def test_requesting_twice_while_queued_gives_the_same_job(reviewer, approver, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    cycle, runs = approved_cycle(reviewer, approver, approve_count=2)
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        first = request_generation(cycle=cycle, user=approver)
        second = request_generation(cycle=cycle, user=approver)
    assert first.pk == second.pk
    assert sent == [("reviews.generate_insights", first.pk)]


def test_it_needs_an_approved_run(reviewer, approver):
    cycle, _ = reviewed_cycle(reviewer, count=2)
    with pytest.raises(GenerationError, match="approved feedback"):
        request_generation(cycle=cycle, user=approver)
    assert not GenerationJob.objects.exists()


def test_it_requires_an_approver(reviewer, approver, engineer):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=1)
    with pytest.raises(PermissionDenied):
        request_generation(cycle=cycle, user=reviewer)
    with pytest.raises(PermissionDenied):
        request_generation(cycle=cycle, user=engineer)


def test_the_chain_turns_approved_feedback_into_insights_and_proposals(standin, reviewer, approver, model_calls):
    cycle, runs = approved_cycle(reviewer, approver)
    run_chain(cycle)

    insights_job, evals_job = generation.latest_chain(cycle)
    assert insights_job.status == evals_job.status == GenerationJob.Status.SUCCEEDED
    assert insights_job.model_name == "gpt-5.5" and insights_job.endpoint == standin
    assert insights_job.started_at and insights_job.finished_at and insights_job.attempts == 1
    assert len(model_calls) == 2  # one per step, no repair needed
    assert generation.INSIGHTS_MARKER in model_calls[0][0]["content"]
    assert generation.EVALS_MARKER in model_calls[1][0]["content"]

    insights = Insight.objects.filter(cycle=cycle)
    assert sorted(insight.run.label for insight in insights) == [run.label for run in runs]
    assert all(insight.observations and insight.model_name == "gpt-5.5" and insight.endpoint == standin
               for insight in insights)
    cited = Insight.objects.get(cycle=cycle, run=runs[0])
    assert "finance/runway.csv" in cited.observations[0]

    cases = {case.source_run.label: case for case in EvalCase.objects.filter(cycle=cycle)}
    assert sorted(cases) == [run.label for run in runs]
    security = cases["trace-04"]
    assert security.eval_id == "security-readiness-trace-04"
    assert security.status == EvalCase.Status.PROPOSED
    assert security.scoring_method == "hybrid"
    assert {"type": "not-contains", "value": "SOC 2 is complete"} in security.deterministic_assertions
    assert {"type": "icontains", "value": "Type I"} in security.deterministic_assertions
    assert '- Claim that "SOC 2 is complete".' in security.rubric.splitlines()
    assert security.model_name == "gpt-5.5" and security.endpoint == standin and security.job == evals_job
    merged = Feedback.objects.get(cycle=cycle, run=runs[3], is_merged=True)
    assert list(security.source_feedback.all()) == [merged]
    assert list(security.source_insights.all()) == [Insight.objects.get(cycle=cycle, run=runs[3])]
    concentration = cases["trace-03"]
    assert {"type": "icontains", "value": "Northstar Holdings"} in concentration.deterministic_assertions
    assert {"type": "icontains", "value": "account_hierarchy.csv"} in concentration.deterministic_assertions

    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.PROPOSED
    assert AuditEvent.objects.filter(action="generation.evals", object_id=str(evals_job.pk)).exists()


def test_proposals_come_only_from_runs_with_approved_feedback(standin, reviewer, approver):
    cycle, runs = approved_cycle(reviewer, approver, approve_count=2)
    request_generation(cycle=cycle, user=approver)
    run_chain(cycle)
    assert Insight.objects.filter(cycle=cycle).count() == 5  # insights cover every finished run
    assert sorted(EvalCase.objects.filter(cycle=cycle).values_list("source_run__label", flat=True)) == [
        "trace-01", "trace-02"]


def test_an_unknown_run_reference_is_rejected_not_guessed(standin_unknown_trace, reviewer, approver, model_calls):
    cycle, _ = approved_cycle(reviewer, approver)
    before = _feedback_state(cycle)
    run_chain(cycle)

    job = GenerationJob.objects.get(cycle=cycle)
    assert job.status == GenerationJob.Status.FAILED
    assert f"trace_id '{UNKNOWN_TRACE_ID}' is not the trace_id of any finished run in this cycle" in job.last_error
    assert UNKNOWN_TRACE_ID in job.raw_output
    assert len(model_calls) == 2  # the answer, then one repair request
    assert not Insight.objects.exists() and not EvalCase.objects.exists()
    assert _feedback_state(cycle) == before
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.REVIEWED


def test_broken_json_gets_one_repair_then_the_step_fails_keeping_the_raw_output(
        standin_broken, reviewer, approver, model_calls):
    cycle, _ = approved_cycle(reviewer, approver)
    before = _feedback_state(cycle)
    run_chain(cycle)

    job = GenerationJob.objects.get(cycle=cycle)
    assert job.status == GenerationJob.Status.FAILED
    assert job.last_error.startswith("The model's output was not usable: Invalid JSON:")
    assert "asked once to correct it" in job.last_error
    assert "=== first output ===\nHere is the JSON you asked for:" in job.raw_output
    assert "=== output after the repair request ===" in job.raw_output
    assert len(model_calls) == 2
    repair = model_calls[1]
    assert [message["role"] for message in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"].startswith("Here is the JSON you asked for:")
    assert generation.REPAIR_MARKER in repair[2]["content"] and "Invalid JSON" in repair[2]["content"]
    assert job.finished_at is not None
    assert _feedback_state(cycle) == before
    assert not Insight.objects.exists()


def test_a_repaired_answer_is_used(standin_broken_once, reviewer, approver, model_calls):
    cycle, _ = approved_cycle(reviewer, approver, count=3)
    run_chain(cycle)
    assert [job.status for job in generation.latest_chain(cycle)] == ["succeeded", "succeeded"]
    assert len(model_calls) == 4  # each step: broken answer + repaired answer
    assert EvalCase.objects.filter(cycle=cycle).count() == 3


def test_eval_ids_stay_unique_in_a_cycle_when_generated_again(standin, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2)
    run_chain(cycle)
    request_generation(cycle=cycle, user=approver)
    run_chain(cycle)
    assert sorted(EvalCase.objects.filter(cycle=cycle).values_list("eval_id", flat=True)) == [
        "financial-risk-trace-01", "financial-risk-trace-01-2", "revenue-quality-trace-02", "revenue-quality-trace-02-2",
    ]


def test_an_unreachable_endpoint_fails_the_step_readably(reviewer, approver, settings):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    cycle, _ = approved_cycle(reviewer, approver, count=1)
    run_chain(cycle)
    job = GenerationJob.objects.get(cycle=cycle)
    assert job.status == GenerationJob.Status.FAILED
    assert job.last_error.startswith("The model endpoint http://127.0.0.1:9/v1 failed (APIConnectionError)")


def test_the_cycle_shows_generating_while_a_step_runs(standin, reviewer, approver, monkeypatch):
    cycle, _ = approved_cycle(reviewer, approver, count=1)
    seen = []
    real = generation._respond

    def watching(**kwargs):
        seen.append(Cycle.objects.get(pk=cycle.pk).status)
        return real(**kwargs)

    monkeypatch.setattr(generation, "_respond", watching)
    run_chain(cycle)
    assert seen == [Cycle.Status.GENERATING, Cycle.Status.GENERATING]
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.PROPOSED
