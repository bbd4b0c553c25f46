"""The HALO step for a cycle: its optimization context, the HALO run as a task, the handoff (the seed's Step 7).

    request_optimization(cycle, user, options)   a queued Optimization (the active one if there is one)
      -> tasks.run_optimization_task             claims it, then run_optimization(optimization)
    run_optimization(optimization)               builds the context from the cycle's rows, writes it into a
                                                 temporary directory, runs HALO (reviews.halo, in its own
                                                 process) with the seed's report prompt, re-prompting once
                                                 when sections are missing; every event HALO reports becomes
                                                 an OptimizationEvent row; the report, the cleaned handoff,
                                                 the still-missing sections and the evidence check (its
                                                 citations resolved, halo.check_evidence) are stored on the row
    halo_after_gate(gate_run)                    called by gate.on_gate_finished: a cycle's succeeded
                                                 baseline gate starts HALO (settings.AUTO_HALO)

The pure pieces (the context lines, the prompt, the section checks, running the child) are in
reviews/halo.py; this module maps the models onto them and keeps the task state on the row.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from loopsite.llm import endpoint
from loopsite.work import beat_seconds
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, require_role
from runs import webhooks
from runs.models import Span

from . import halo
from .generation import approved_feedback, insight_dict, latest_insights
from .models import Cycle, EvalCase, GateRun, GenerationJob, Insight, Optimization, OptimizationEvent

log = logging.getLogger(__name__)

CONTEXT_FILE = "halo_optimization_context.jsonl"
HANDOFF_FILE = "codex_handoff.md"
TEXT_EVENT_CHARS = 20_000  # one stored text delta at most (the child already coalesces them)

# What an engineer may set per run, with the bounds the form enforces.
OPTION_LIMITS = {
    "maximum_depth": (0, 3),
    "maximum_turns": (1, 60),
    "maximum_parallel_subagents": (1, 8),
}


class OptimizationError(Exception):
    """HALO cannot start or finish as things stand; the message is shown on the HALO page."""


# --- the context ----------------------------------------------------------------------------------------


def latest_handoff_text(harness) -> str | None:
    """The handoff of the newest successful HALO run over a cycle of `harness`, or None (runs.handoffs reads it)."""
    row = (
        Optimization.objects.filter(cycle__harness=harness, status=Optimization.Status.SUCCEEDED)
        .exclude(handoff="").order_by("-finished_at", "-pk").only("handoff").first()
    )
    return row.handoff if row is not None and row.handoff.strip() else None


def latest_gate_run(cycle: Cycle) -> GateRun | None:
    """The cycle's latest succeeded baseline gate run (the one HALO reads), or None."""
    return (
        GateRun.objects.filter(cycle=cycle, kind=GateRun.Kind.BASELINE, status=GateRun.Status.SUCCEEDED)
        .order_by("-finished_at", "-pk").first()
    )


def _cycle_insights(cycle: Cycle) -> list[Insight]:
    """The insights of the latest successful insights job; without any job, every insight of the cycle."""
    if cycle.generation_jobs.filter(kind=GenerationJob.Kind.INSIGHTS).exists():
        return latest_insights(cycle)
    return list(cycle.insights.select_related("run__question").order_by("run__label", "run_id", "pk"))


def eval_definition(case: EvalCase) -> dict[str, Any]:
    """An approved case as the seed's eval definition (the keys build_context_lines reads)."""
    run = case.source_run
    return {
        "eval_id": case.eval_id,
        "title": case.title,
        "scoring_method": case.scoring_method,
        "expected_behavior": case.expected_behavior,
        "source_trace_id": run.trace_id,
        "source_trace_label": run.label,
        "rubric": case.rubric,
        "deterministic_assertions": case.deterministic_assertions,
        "suggested_pass_example": case.pass_example,
        "suggested_fail_example": case.fail_example,
    }


def run_span_lines(cycle: Cycle) -> list[dict]:
    """The stored HALO JSONL lines of the cycle's runs: runs in label order, spans in exported order."""
    return list(
        Span.objects.filter(run__cycles=cycle)
        .order_by("run__label", "run_id", "position")
        .values_list("data", flat=True)
    )


def cycle_context_lines(*, cycle: Cycle, gate_run: GateRun | None) -> list[dict]:
    """Every line of the cycle's optimization context, as the seed builds it (reviews.halo.build_context_lines).

    The runs' spans, the harness config, the approved merged feedback, the cycle's insights, its
    approved eval cases, and the rows and summary of `gate_run` (none when it is None). Gate rows
    without a run (nothing to attach them to) are left out. Raises ValueError naming a line HALO
    could not load.
    """
    cases = (
        EvalCase.objects.filter(cycle=cycle, status=EvalCase.Status.APPROVED)
        .select_related("source_run").order_by("eval_id")
    )
    if gate_run is not None:
        rows = [row for row in gate_run.summary_rows() if row["trace_id"]]
        summary = gate_run.summary()
    else:
        rows, summary = [], {"total": 0, "passed": 0, "failed": 0}
    return halo.build_context_lines(
        run_span_lines=run_span_lines(cycle),
        harness_config=cycle.harness.as_config(),
        human_feedback=[feedback.as_seed_dict() for feedback in approved_feedback(cycle)],
        llm_insights=[insight_dict(insight) for insight in _cycle_insights(cycle)],
        eval_definitions=[eval_definition(case) for case in cases],
        gate_rows=rows,
        gate_summary=summary,
    )


def context_jsonl(lines: list[dict]) -> str:
    import json

    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


# --- requesting ---------------------------------------------------------------------------------------------


def default_options() -> dict[str, int]:
    return {
        "maximum_depth": int(settings.HALO_MAXIMUM_DEPTH),
        "maximum_turns": int(settings.HALO_MAXIMUM_TURNS),
        "maximum_parallel_subagents": int(settings.HALO_MAXIMUM_PARALLEL_SUBAGENTS),
    }


def clean_options(options: dict[str, Any] | None) -> dict[str, int]:
    """The defaults overridden by `options`, each checked against OPTION_LIMITS (ValueError names the bad one)."""
    values = default_options()
    for name, value in (options or {}).items():
        if name not in OPTION_LIMITS:
            raise ValueError(f"Unknown HALO option {name!r}.")
        low, high = OPTION_LIMITS[name]
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{name.replace('_', ' ')} must be between {low} and {high}.")
        values[name] = number
    return values


def enqueue(optimization: Optimization) -> None:
    from .tasks import run_optimization_task

    run_optimization_task.delay_on_commit(optimization.pk)


def active_optimization(cycle: Cycle) -> Optimization | None:
    return cycle.optimizations.filter(status__in=Optimization.ACTIVE_STATUSES).order_by("created_at", "pk").first()


def latest_optimization(cycle: Cycle) -> Optimization | None:
    return cycle.optimizations.order_by("-created_at", "-pk").first()


def latest_handoff(cycle: Cycle) -> Optimization | None:
    """The newest succeeded optimization of the cycle that has a handoff."""
    return (
        cycle.optimizations.filter(status=Optimization.Status.SUCCEEDED).exclude(handoff="")
        .order_by("-finished_at", "-pk").first()
    )


def latest_agent_handoff(agent) -> Optimization | None:
    """The newest handoff written for any cycle of `agent` (what the read-only API answers)."""
    return (
        Optimization.objects.filter(cycle__harness__agent=agent, status=Optimization.Status.SUCCEEDED)
        .exclude(handoff="").select_related("cycle__harness__agent").order_by("-finished_at", "-pk").first()
    )


def handoff_file(optimization: Optimization) -> str:
    """codex_handoff.md: the handoff as HALO wrote it, then the evidence check's findings (if any)."""
    return optimization.handoff.rstrip("\n") + "\n" + halo.evidence_appendix(optimization.evidence_checks or {})


def handoff_facts(optimization: Optimization) -> dict[str, Any]:
    """Which handoff this is, as the read-only API answers and the webhook announces it (without its text)."""
    cycle = optimization.cycle
    harness = cycle.harness
    return {
        "id": optimization.pk, "cycle": {"id": cycle.pk, "name": cycle.name},
        "version": harness.version, "agent_version": harness.agent_version or harness.version,
        "created_at": optimization.finished_at.isoformat() if optimization.finished_at else None,
        "url": reverse("reviews:handoff", args=[optimization.pk]),
        "api": reverse("reviews:api-handoff", args=[harness.agent.slug]),
    }


def _announce_handoff(optimization_id: int) -> None:
    """Inside the finish that stored the handoff: the agent's webhook hears of it once that commits."""
    stored = Optimization.objects.select_related("cycle__harness__agent").get(pk=optimization_id)
    if stored.handoff.strip():
        webhooks.handoff_written(agent=stored.cycle.harness.agent, handoff=handoff_facts(stored))


def request_optimization(*, cycle: Cycle, user, options: dict[str, Any] | None = None) -> Optimization:
    """Queue HALO for a cycle (engineers and approvers; `user` None: started by the app).

    Idempotent while one is queued or running: that one is returned. The gate rows come from the
    cycle's latest succeeded gate run at this moment (none yet: HALO reads no gate spans).
    """
    if user is not None:
        require_role(user, ENGINEER, APPROVER)
    values = clean_options(options)
    ep = endpoint()
    with transaction.atomic():
        locked = Cycle.objects.select_for_update().get(pk=cycle.pk)
        active = active_optimization(locked)
        if active is not None:
            return active
        gate_run = latest_gate_run(locked)
        optimization = Optimization.objects.create(
            cycle=locked, gate_run=gate_run, requested_by=user, heartbeat_at=timezone.now(),
            options={**values, "model": settings.OPENAI_HALO_MODEL, "endpoint": ep.base_url},
            model_name=settings.OPENAI_HALO_MODEL, endpoint=ep.base_url,
        )
        AuditEvent.record(
            actor=user, action="halo.request", obj=optimization,
            summary=f"HALO requested for cycle {locked.pk} (run {optimization.pk})"
                    + (f" on gate run {gate_run.pk}" if gate_run else " without a gate run"),
            after={"optimization": optimization.pk, "gate_run": gate_run.pk if gate_run else None,
                   "options": optimization.options},
        )
        enqueue(optimization)
    return optimization


def halo_after_gate(gate_run: GateRun) -> Optimization | None:
    """From gate.on_gate_finished: a succeeded baseline gate run of a cycle starts HALO when AUTO_HALO is on.
    Never raises (the gate run's outcome stands)."""
    if not settings.AUTO_HALO or gate_run.status != GateRun.Status.SUCCEEDED:
        return None
    if gate_run.kind != GateRun.Kind.BASELINE or not gate_run.cycle_id:
        return None
    try:
        return request_optimization(cycle=gate_run.cycle, user=None)
    except Exception:  # noqa: BLE001
        log.exception("gate run %s: could not start HALO for cycle %s", gate_run.pk, gate_run.cycle_id)
        return None


# --- running ---------------------------------------------------------------------------------------------


class _Lost(Exception):
    """The optimization stopped being ours while HALO ran (the sweep re-queued or failed it)."""


class EventRecorder:
    """on_event for run_halo: appends OptimizationEvent rows and beats the row's heartbeat.

    A status event replaces the previous one when nothing else happened in between, so the
    page keeps one "elapsed" line instead of one every two seconds. The report event keeps
    only its length (the report itself is stored on the row). Raises _Lost (which stops HALO)
    once the row is no longer running here.
    """

    def __init__(self, optimization: Optimization):
        self.optimization = optimization
        self.seq = optimization.events.count()
        self.last: OptimizationEvent | None = None
        self.last_beat = time.monotonic()
        self.retried = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type") or "unknown")[:20]
        data = {key: value for key, value in event.items() if key != "type"}
        if kind == "report":
            data = {"chars": len(str(data.get("text") or "")), "elapsed": data.get("elapsed")}
        elif kind == "text":
            data["delta"] = str(data.get("delta") or "")[:TEXT_EVENT_CHARS]
        elif kind == "retry":
            self.retried = True
        now = timezone.now()
        if kind == "status" and self.last is not None and self.last.type == "status":
            self.last.data, self.last.at = data, now
            self.last.save(update_fields=["data", "at"])
        else:
            self.seq += 1
            self.last = OptimizationEvent.objects.create(optimization=self.optimization, seq=self.seq, at=now,
                                                         type=kind, data=data)
        if time.monotonic() - self.last_beat >= beat_seconds():  # at most one heartbeat UPDATE per beat
            self.last_beat = time.monotonic()
            if not self.optimization.beat():
                raise _Lost()


def halo_options(optimization: Optimization) -> halo.HaloOptions:
    stored = optimization.options or {}
    overrides = {name: int(stored[name]) for name in OPTION_LIMITS if name in stored}
    return halo.options_from_settings(**overrides)


def run_optimization(*, optimization: Optimization) -> Optimization:
    """Run a claimed optimization to its end; every outcome is stored on the row."""
    try:
        _run(optimization)
    except _Lost:
        log.warning("HALO run %s is no longer running here; its results were discarded", optimization.pk)
    except (OptimizationError, halo.HaloError) as exc:
        _fail(optimization, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, re-runnable failure, not a stuck row
        log.exception("HALO run %s failed", optimization.pk)
        _fail(optimization, f"Unexpected error ({type(exc).__name__}): {exc}")
    optimization.refresh_from_db()
    return optimization


def _fail(optimization: Optimization, error: str) -> None:
    log.warning("HALO run %s failed: %s", optimization.pk, error)
    if optimization.finish(error=error):
        AuditEvent.record(actor=None, action="halo.fail", obj=optimization,
                          summary=f"HALO run {optimization.pk} for cycle {optimization.cycle_id} failed",
                          after={"error": error[:2000]})


def _run(optimization: Optimization) -> None:
    cycle = optimization.cycle
    optimization.events.all().delete()  # a swept attempt's events: this attempt starts the log afresh
    try:
        lines = cycle_context_lines(cycle=cycle, gate_run=optimization.gate_run)
    except ValueError as exc:
        raise OptimizationError(f"The optimization context could not be built: {exc}") from exc
    stats = halo.input_summary_rows(lines)
    options = halo_options(optimization)
    Optimization.objects.filter(pk=optimization.pk).update(context_stats=stats, model_name=options.model,
                                                           endpoint=options.base_url)
    recorder = EventRecorder(optimization)
    with optimization.scratch_dir() as tmp:  # removed by the next attempt or the sweep if this worker dies
        context_path = halo.write_context(lines, tmp / CONTEXT_FILE)
        report, missing = halo.run_halo_with_retry(
            context_path=context_path, prompt=halo.render_report_prompt(), options=options,
            on_event=recorder, timeout=float(settings.HALO_TIMEOUT_SECONDS), temp_root=tmp,
        )
    handoff = halo.clean_handoff(report)
    checks = halo.check_evidence(handoff=handoff, lines=lines)
    if not optimization.finish(report=report, handoff=handoff, missing_sections=missing, retried=recorder.retried,
                               context_stats=stats, evidence_checks=checks,
                               store=lambda: _announce_handoff(optimization.pk)):
        raise _Lost()
    AuditEvent.record(
        actor=None, action="halo.finish", obj=optimization,
        summary=f"HALO run {optimization.pk} for cycle {cycle.pk} wrote a handoff of {len(handoff)} characters"
                + (f"; missing: {', '.join(missing)}" if missing else ""),
        after={"missing_sections": missing, "retried": recorder.retried, "model": options.model,
               "endpoint": options.base_url, "unresolved_citations": len(checks["unresolved"]),
               "contradicted_claims": len(checks["stated_claims"])},
    )
