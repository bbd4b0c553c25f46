"""From approved feedback to eval proposals: the insights -> evals chain (the seed's Steps 4 and 5).

    request_generation(cycle, user)   an insights job, queued (no second chain while one is active)
      -> tasks.generate_insights      generate_insights(job): Insight rows; then queues the evals job
      -> tasks.generate_evals         generate_evals(job): EvalCase proposals with provenance

Both steps call the model through loopsite.llm (Responses API), validate the output
against the seed's schema (validation.py), send ONE repair request when it does not fit,
and otherwise fail the job with the raw output kept. A failure never touches feedback.
"""

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Prefetch
from django.utils import timezone

from loopsite.llm import endpoint, openai_client
from loopsite.work import beat_seconds
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, require_role
from runs.models import Run

from .models import BackTestRun, Cycle, EvalCase, Feedback, FeedbackItem, GenerationJob, Insight
from .validation import SchemaError, parse_json, validate_evals, validate_insights

log = logging.getLogger(__name__)

# Readable markers at the top of each prompt. They tell people reading a log what the
# request was for, and the offline stand-in model which role to play.
INSIGHTS_MARKER = "Loopsite task: llm-insights"
EVALS_MARKER = "Loopsite task: eval-generation"
REPAIR_MARKER = "Loopsite task: repair-json"
# A second line under EVALS_MARKER: the request repairs one eval whose back-test speaks against it.
EVAL_REPAIR_MARKER = "Loopsite task: eval-repair-after-backtest"

MODEL_TIMEOUT_SECONDS = 300.0  # one model call; the heartbeat keeps the job alive meanwhile
ANSWER_CHARS = 6000
EXCERPT_CHARS = 300


class GenerationError(Exception):
    """A step that cannot succeed as things stand; the message is shown in the page."""

    def __init__(self, message: str, *, raw_output: str = ""):
        super().__init__(message)
        self.raw_output = raw_output


# --- starting, retrying and watching the chain -------------------------------------------------


def enqueue(job: GenerationJob) -> None:
    from .tasks import generate_evals_task, generate_insights_task

    task = generate_insights_task if job.kind == GenerationJob.Kind.INSIGHTS else generate_evals_task
    task.delay_on_commit(job.pk)


def request_generation(*, cycle: Cycle, user) -> GenerationJob:
    """Queue the chain for a cycle with at least one approved run; returns the active job if one exists."""
    require_role(user, APPROVER)
    with transaction.atomic():
        locked = Cycle.objects.select_for_update().get(pk=cycle.pk)
        active = locked.generation_jobs.filter(status__in=GenerationJob.ACTIVE_STATUSES).order_by("created_at").first()
        if active is not None:
            return active
        if not approved_feedback(locked).exists():
            raise GenerationError("No run in this cycle has approved feedback yet.")
        now = timezone.now()
        job = GenerationJob.objects.create(
            cycle=locked, kind=GenerationJob.Kind.INSIGHTS, requested_by=user, heartbeat_at=now
        )
        locked.generation_requested_at = now
        locked.generation_requested_by = user
        locked.save(update_fields=["generation_requested_at", "generation_requested_by"])
        AuditEvent.record(
            actor=user, action="generation.request", obj=locked,
            summary=f"Eval generation requested for cycle {locked.pk} (job {job.pk})",
            after={"job": job.pk, "approved_runs": approved_feedback(locked).count()},
        )
        enqueue(job)
    cycle.refresh_from_db(fields=["generation_requested_at", "generation_requested_by"])
    return job


def start_when_reviewed(*, cycle: Cycle, run: Run, user) -> GenerationJob | None:
    """Called by approve_run(): start the chain when this approval made every run of the cycle approved.

    Only a run's first approval counts, so re-approving an edited merged feedback does not
    start the chain again (the approver has the button for that). Never breaks the approval.
    """
    try:
        progress = cycle.progress()
        if not progress["total"] or progress["approved"] != progress["total"]:
            return None
        merged = Feedback.objects.filter(cycle=cycle, run=run, is_merged=True).first()
        if merged is None or merged.revisions.filter(action="approve").count() != 1:
            return None
        return request_generation(cycle=cycle, user=user)
    except Exception:  # noqa: BLE001 - the approval must stand even if generation cannot start
        log.exception("cycle %s: could not start eval generation after approving run %s", cycle.pk, run.pk)
        return None


def retry_job(*, job: GenerationJob, user) -> bool:
    """Re-queue a failed step (approvers and engineers). False if it was not failed."""
    require_role(user, APPROVER, ENGINEER)
    with transaction.atomic():
        if not job.requeue(by=user):
            return False
        enqueue(job)
    return True


def latest_chain(cycle: Cycle) -> list[GenerationJob]:
    """The jobs of the most recent chain: its insights job and the evals job(s) queued after it."""
    first = cycle.generation_jobs.filter(kind=GenerationJob.Kind.INSIGHTS).order_by("-created_at", "-pk").first()
    if first is None:
        return []
    later = cycle.generation_jobs.filter(kind=GenerationJob.Kind.EVALS, created_at__gte=first.created_at)
    return [first, *later.order_by("created_at", "pk")]


def latest_insights(cycle: Cycle) -> list[Insight]:
    """Insights of the cycle's most recent successful insights job."""
    job = (
        cycle.generation_jobs.filter(kind=GenerationJob.Kind.INSIGHTS, status=GenerationJob.Status.SUCCEEDED)
        .order_by("-finished_at", "-pk").first()
    )
    if job is None:
        return []
    return list(job.insights.select_related("run").order_by("run__label", "run_id", "pk"))


def _settle_cycle(cycle_id: int) -> None:
    """After a step ends: proposed when the cycle has eval cases, else back to its review state."""
    cycle = Cycle.objects.get(pk=cycle_id)
    if cycle.status != Cycle.Status.GENERATING or cycle.generation_jobs.filter(
        status__in=GenerationJob.ACTIVE_STATUSES
    ).exists():
        return
    if cycle.eval_cases.exists():
        cycle.status = Cycle.Status.PROPOSED
    else:
        progress = cycle.progress()
        done = progress["total"] and progress["approved"] == progress["total"]
        cycle.status = Cycle.Status.REVIEWED if done else Cycle.Status.REVIEWING
    cycle.save(update_fields=["status"])


# --- what the model reads ------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"


def trace_record(run: Run) -> dict[str, Any]:
    """A run as the seed's TraceRecord, plus an artifacts summary and the validators' results."""
    artifacts = list(run.artifacts.all())
    names = {artifact.name for artifact in artifacts}
    return {
        "trace_id": run.trace_id,
        "trace_label": run.label,
        "question": run.question.text,
        "answer": _clip(run.final_answer, ANSWER_CHARS),
        "artifacts": [
            {"name": artifact.name, "bytes": artifact.size, "excerpt": _clip(artifact.content, EXCERPT_CHARS)}
            for artifact in artifacts
        ],
        "missing_artifacts": [name for name in run.harness.required_artifacts if name not in names],
        "validators": {
            "evidence_coverage_passed": run.evidence_passed,
            "output_contract_passed": run.contract_passed,
        },
    }


def approved_feedback(cycle: Cycle):
    """The cycle's approved merged feedback: one per approved run."""
    return (
        Feedback.objects.filter(cycle=cycle, is_merged=True, status=Feedback.Status.APPROVED)
        .select_related("run__question", "run__harness")
        .prefetch_related(Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id")))
        .order_by("run__label", "run_id")
    )


def insight_dict(insight: Insight) -> dict[str, Any]:
    """The seed's llm_insight shape."""
    return {
        "insight_id": f"llm_insight_{insight.pk}",
        "trace_id": insight.run.trace_id,
        "trace_label": insight.run.label,
        "question": insight.run.question.text,
        "source_type": "llm_insight",
        "observations": insight.observations,
    }


def insights_prompt(traces: list[dict[str, Any]]) -> str:
    return f"""{INSIGHTS_MARKER}
You are reviewing traces from a financial diligence analyst agent.
Return JSON only: a list of objects with keys `insight_id`, `trace_id`, `question`, `source_type`, and `observations`.
Use `source_type` = `llm_insight`.
For `trace_id`, copy the provided `trace_id` field exactly; do not use `trace_label`.
Write one object per trace; `observations` is a list of 1 to 5 strings.
For each trace, identify concise recurring-behavior observations that could help generate evals later.
Do not restate the whole answer. Do not invent unavailable evidence.

Traces:
{json.dumps(traces, indent=2, ensure_ascii=False)}
"""


def evals_prompt(traces: list[dict[str, Any]], feedback: list[dict[str, Any]], insights: list[dict[str, Any]]) -> str:
    min_count = min(5, max(2, len(traces)))
    max_count = min(7, max(min_count, len(traces) + 2))
    return f"""{EVALS_MARKER}
You are designing an eval suite for an OpenAI Agents SDK-backed financial diligence analyst.
Use the traces, human feedback, and LLM insights below to generate {min_count} to {max_count} durable eval definitions.
Every human feedback item was approved by an approver: its `required_observations` describe what a passing answer does, its `prohibited_claims` what a passing answer must not say. Base each eval on approved human feedback; use the LLM insights only as supporting context.
Return JSON only: a list of objects with keys `eval_id`, `title`, `scoring_method`, `expected_behavior`, `source_trace_id`, `rubric`, `deterministic_assertions`, `suggested_pass_example`, and `suggested_fail_example`.
`eval_id` must be a short lowercase slug (letters, digits, hyphens), unique in the list.
`scoring_method` must be one of `deterministic`, `llm_judge`, or `hybrid`.
`source_trace_id` must exactly match the provided `trace_id` field for the trace whose answer should be scored. Do not use `trace_label` for this field.
`rubric` must be a concise pass/fail grading rubric suitable for Promptfoo `llm-rubric`; put literal phrases the answer must or must not contain in double quotes.
`deterministic_assertions` must be a list of Promptfoo-style assertion objects `{{"type": ..., "value": ...}}` and may use only `contains`, `icontains`, or `not-contains` when a literal check is clearly useful; otherwise return an empty list.
Prefer reusable behaviors over one-off trace restatements.

Traces:
{json.dumps(traces, indent=2, ensure_ascii=False)}

Human feedback:
{json.dumps(feedback, indent=2, ensure_ascii=False)}

LLM insights:
{json.dumps(insights, indent=2, ensure_ascii=False)}
"""


def eval_repair_prompt(*, case_item: dict[str, Any], backtest_rows: list[dict[str, Any]], traces: list[dict[str, Any]],
                       feedback: list[dict[str, Any]], insights: list[dict[str, Any]]) -> str:
    """One eval sent back with its back-test: the same schema, one object, checks that decide correctly."""
    return f"""{EVALS_MARKER}
{EVAL_REPAIR_MARKER}
You designed the eval definition below from approved human feedback on one trace of a financial diligence analyst.
It was back-tested with promptfoo exactly as the regression gate runs it: on the trace's stored answer (which the
reviewers judged), on its own `suggested_fail_example` and on its own `suggested_pass_example`. A useful eval FAILS
the answer the reviewers failed and its fail example, and PASSES its pass example. The back-test rows below show
where this one does not: each row has the answer tested, the outcome expected, the outcome promptfoo reported, and
why. Write a corrected version that checks what the reviewers asked for, so that it decides each row as expected.
Return JSON only: a list with exactly one object with keys `eval_id`, `title`, `scoring_method`, `expected_behavior`,
`source_trace_id`, `rubric`, `deterministic_assertions`, `suggested_pass_example`, and `suggested_fail_example`.
Keep `eval_id` and `source_trace_id`. `scoring_method` must be one of `deterministic`, `llm_judge`, or `hybrid`.
`deterministic_assertions` may use only `contains`, `icontains`, or `not-contains`; put literal phrases the answer
must or must not contain in double quotes in the rubric.

Eval definition:
{json.dumps(case_item, indent=2, ensure_ascii=False)}

Back-test rows:
{json.dumps(backtest_rows, indent=2, ensure_ascii=False)}

Traces:
{json.dumps(traces, indent=2, ensure_ascii=False)}

Human feedback:
{json.dumps(feedback, indent=2, ensure_ascii=False)}

LLM insights:
{json.dumps(insights, indent=2, ensure_ascii=False)}
"""


def repair_prompt(error: SchemaError) -> str:
    return f"""{REPAIR_MARKER}
Your previous answer (above) could not be used: {error}
Return the corrected JSON only, for the same task and with the same schema: no commentary, no Markdown fences."""


# --- calling the model -------------------------------------------------------------------------------


@contextmanager
def _heartbeat(job: GenerationJob) -> Iterator[None]:
    """Beat the job's heartbeat every beat_seconds() while a (blocking) model call runs."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(beat_seconds()):
                job.beat()
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"genjob-{job.pk}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _respond(*, job: GenerationJob, model: str, messages: list[dict[str, str]]) -> str:
    import openai

    ep = endpoint()
    client = openai_client(timeout=MODEL_TIMEOUT_SECONDS, max_retries=1)
    try:
        with _heartbeat(job):
            response = client.responses.create(model=model, input=messages)
    except openai.OpenAIError as exc:
        raise GenerationError(f"The model endpoint {ep.base_url} failed ({type(exc).__name__}): {exc}") from exc
    job.beat()
    return response.output_text or ""


def ask_for_json(*, job: GenerationJob, model: str, prompt: str, validate: Callable[[Any], list]) -> list:
    """Ask, validate, and on invalid JSON or schema ask ONCE more with the error and the raw output."""
    ep = endpoint()
    GenerationJob.objects.filter(pk=job.pk).update(model_name=model, endpoint=ep.base_url)
    job.model_name, job.endpoint = model, ep.base_url
    messages = [{"role": "user", "content": prompt}]
    raw = _respond(job=job, model=model, messages=messages)
    try:
        return validate(parse_json(raw))
    except SchemaError as first:
        log.warning("generation job %s: output not usable (%s); asking once for a repair", job.pk, first)
        messages += [{"role": "assistant", "content": raw}, {"role": "user", "content": repair_prompt(first)}]
        repaired = _respond(job=job, model=model, messages=messages)
        try:
            return validate(parse_json(repaired))
        except SchemaError as second:
            raise GenerationError(
                f"The model's output was not usable: {first} It was asked once to correct it, "
                f"and the corrected output was not usable either: {second}",
                raw_output=f"=== first output ===\n{raw}\n\n=== output after the repair request ===\n{repaired}",
            ) from second


# --- the two steps ------------------------------------------------------------------------------------


def _finished_runs(cycle: Cycle) -> list[Run]:
    return list(
        cycle.runs.filter(status=Run.Status.SUCCEEDED)
        .select_related("question", "harness").prefetch_related("artifacts").order_by("label", "pk")
    )


def generate_insights(*, job: GenerationJob) -> list[Insight]:
    """The seed's generate_llm_feedback over the cycle's finished runs; queues the evals step on success."""
    cycle = job.cycle
    runs = _finished_runs(cycle)
    if not runs:
        raise GenerationError("This cycle has no finished runs with an answer to review.")
    by_trace = {run.trace_id: run for run in runs}
    items = ask_for_json(
        job=job, model=settings.OPENAI_ANALYSIS_MODEL, prompt=insights_prompt([trace_record(run) for run in runs]),
        validate=lambda parsed: validate_insights(parsed, trace_ids=set(by_trace), scope="any finished run in this cycle"),
    )
    with transaction.atomic():
        insights = Insight.objects.bulk_create(
            Insight(cycle=cycle, run=by_trace[item["trace_id"]], job=job, observations=item["observations"],
                    model_name=job.model_name, endpoint=job.endpoint)
            for item in items
        )
        if not job.finish():
            raise _LostJob(job)
        next_job = GenerationJob.objects.create(
            cycle=cycle, kind=GenerationJob.Kind.EVALS, requested_by=job.requested_by, heartbeat_at=timezone.now()
        )
        AuditEvent.record(
            actor=None, action="generation.insights", obj=job,
            summary=f"{len(insights)} insight(s) for cycle {cycle.pk} from {job.model_name}; evals job {next_job.pk} queued",
            after={"insights": [insight.pk for insight in insights], "model": job.model_name, "endpoint": job.endpoint},
        )
        enqueue(next_job)
    return insights


def _unique_eval_id(wanted: str, taken: set[str]) -> str:
    base = (wanted or "eval")[:100]
    eval_id, number = base, 2
    while eval_id in taken:
        eval_id, number = f"{base}-{number}", number + 1
    taken.add(eval_id)
    return eval_id


def generate_evals(*, job: GenerationJob) -> list[EvalCase]:
    """The seed's generate_feedback_derived_evals over the runs with approved feedback, plus insights."""
    cycle = job.cycle
    feedback = list(approved_feedback(cycle))
    if not feedback:
        raise GenerationError("No run in this cycle has approved feedback yet.")
    runs = {fb.run.trace_id: fb.run for fb in feedback}
    feedback_by_run = {fb.run_id: fb for fb in feedback}
    insights = [insight for insight in latest_insights(cycle) if insight.run.trace_id in runs]
    traces = [trace_record(run) for run in Run.objects.filter(pk__in=[r.pk for r in runs.values()])
              .select_related("question", "harness").prefetch_related("artifacts").order_by("label", "pk")]
    items = ask_for_json(
        job=job, model=settings.OPENAI_EVAL_GENERATION_MODEL,
        prompt=evals_prompt(traces, [fb.as_seed_dict() for fb in feedback], [insight_dict(i) for i in insights]),
        validate=lambda parsed: validate_evals(
            parsed, trace_ids=set(runs), scope="any run with approved feedback in this cycle"
        ),
    )
    with transaction.atomic():
        taken = set(EvalCase.objects.filter(cycle=cycle).values_list("eval_id", flat=True))
        cases = []
        for item in items:
            run = runs[item["source_trace_id"]]
            case = EvalCase.objects.create(
                cycle=cycle, eval_id=_unique_eval_id(item["eval_id"], taken), title=item.get("title", "")[:300],
                scoring_method=item["scoring_method"], expected_behavior=item.get("expected_behavior", ""),
                source_run=run, rubric=item.get("rubric", ""),
                deterministic_assertions=item["deterministic_assertions"],
                pass_example=item.get("suggested_pass_example", ""), fail_example=item.get("suggested_fail_example", ""),
                job=job, model_name=job.model_name, endpoint=job.endpoint,
            )
            case.source_feedback.set([feedback_by_run[run.pk]])
            case.source_insights.set([insight for insight in insights if insight.run_id == run.pk])
            cases.append(case)
        if not job.finish():
            raise _LostJob(job)
        from .backtest import request_backtest  # each proposal is back-tested by the worker, then repaired once

        for case in cases:
            request_backtest(case=case, purpose=BackTestRun.Purpose.GENERATED)
        AuditEvent.record(
            actor=None, action="generation.evals", obj=job,
            summary=f"{len(cases)} eval proposal(s) for cycle {cycle.pk} from {job.model_name}",
            after={"eval_cases": [case.eval_id for case in cases], "model": job.model_name, "endpoint": job.endpoint},
        )
    _settle_cycle(cycle.pk)
    return cases


def _eval_item(case: EvalCase) -> dict[str, Any]:
    return {
        "eval_id": case.eval_id, "title": case.title, "scoring_method": case.scoring_method,
        "expected_behavior": case.expected_behavior, "source_trace_id": case.source_run.trace_id,
        "rubric": case.rubric, "deterministic_assertions": case.deterministic_assertions,
        "suggested_pass_example": case.pass_example, "suggested_fail_example": case.fail_example,
    }


def _backtest_rows(backtest_run) -> list[dict[str, Any]]:
    return [
        {"answer_tested": row.get_target_display() + (f" (run {row.run.label or row.run_id})" if row.run_id else ""),
         "answer_excerpt": row.answer_excerpt, "expected": row.expected or "informational",
         "promptfoo_outcome": row.outcome, "score": row.score, "reason": row.reason[:600],
         "assertions": [{"type": item.get("type"), "value": item.get("value"), "pass": item.get("pass")}
                        for item in row.assertions]}
        for row in backtest_run.rows.select_related("run").order_by("position")
    ]


def repair_eval(*, case: EvalCase, backtest_run, heartbeat) -> tuple[dict[str, Any], str]:
    """Send one proposal back to the eval generator with its back-test rows; returns (the corrected content
    as EvalCase fields, the model). `heartbeat` (a claimed work row) beats while the model answers.
    Raises GenerationError when the answer is not one usable eval for the same trace (after one JSON repair)."""
    model = settings.OPENAI_EVAL_GENERATION_MODEL
    run = case.source_run
    feedback = [fb for fb in case.source_feedback.filter(status=Feedback.Status.APPROVED)
                .select_related("run__question", "run__harness")
                .prefetch_related(Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id")))]
    insights = [insight_dict(insight) for insight in case.source_insights.select_related("run__question")]
    full_run = Run.objects.select_related("question", "harness").prefetch_related("artifacts").get(pk=run.pk)
    prompt = eval_repair_prompt(case_item=_eval_item(case), backtest_rows=_backtest_rows(backtest_run),
                                traces=[trace_record(full_run)], feedback=[fb.as_seed_dict() for fb in feedback],
                                insights=insights)

    def validate(parsed: Any) -> list:
        items = validate_evals(parsed, trace_ids={run.trace_id}, scope="the case's source run")
        if len(items) != 1:
            raise SchemaError(f"expected exactly one eval definition, got {len(items)}")
        return items

    messages = [{"role": "user", "content": prompt}]
    raw = _respond(job=heartbeat, model=model, messages=messages)
    try:
        [item] = validate(parse_json(raw))
    except SchemaError as first:
        messages += [{"role": "assistant", "content": raw}, {"role": "user", "content": repair_prompt(first)}]
        repaired = _respond(job=heartbeat, model=model, messages=messages)
        try:
            [item] = validate(parse_json(repaired))
        except SchemaError as second:
            raise GenerationError(f"The model's repair was not usable: {second}", raw_output=repaired) from second
    content = {
        "title": (item.get("title") or case.title)[:300], "scoring_method": item["scoring_method"] or case.scoring_method,
        "expected_behavior": item.get("expected_behavior") or case.expected_behavior, "rubric": item.get("rubric", ""),
        "deterministic_assertions": item["deterministic_assertions"],
        "pass_example": item.get("suggested_pass_example", case.pass_example),
        "fail_example": item.get("suggested_fail_example", case.fail_example),
    }
    return content, model


class _LostJob(Exception):
    """The job stopped being ours while it ran (the sweep re-queued or failed it): keep nothing."""

    def __init__(self, job: GenerationJob):
        super().__init__(f"generation job {job.pk} is no longer running here")


def run_job(*, job: GenerationJob) -> None:
    """Run a claimed job; every outcome ends on the job row (task state lives on our rows)."""
    step = generate_insights if job.kind == GenerationJob.Kind.INSIGHTS else generate_evals
    # The cycle shows "Generating evals" while a step runs (not while it waits in the queue).
    Cycle.objects.filter(pk=job.cycle_id).exclude(status=Cycle.Status.CLOSED).update(status=Cycle.Status.GENERATING)
    try:
        step(job=job)
        return
    except _LostJob as exc:
        log.warning("%s; its results were discarded", exc)
        return
    except GenerationError as exc:
        error, raw_output = str(exc), exc.raw_output
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, retryable failure, not a stuck job
        log.exception("generation job %s failed", job.pk)
        error, raw_output = f"Unexpected error ({type(exc).__name__}): {exc}", ""
    log.warning("generation job %s failed: %s", job.pk, error)
    job.finish(error=error, raw_output=raw_output)
    _settle_cycle(job.cycle_id)
