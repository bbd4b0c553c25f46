"""The promptfoo gate: the approved regression suite run on stored answers (the seed's Step 6).

    request_gate(cycle=... | harness=..., user)   a queued GateRun (the active one if there is one)
      -> tasks.run_gate_task                      claims it, then run_gate(gate_run)
    run_gate(gate_run)                            builds the config, runs it through reviews.promptfoo.run_config
                                                  (provider.py + answers.json + promptfooconfig.yaml in a temporary
                                                  directory, the project's promptfoo), stores every row, the totals,
                                                  the results file, the log tail

Which answers: each approved case is matched to one run of the gate's scope (a cycle's runs,
or without a cycle the harness's runs): its source run when that is in scope, else the latest
run there of the same question on the same dataroom. Cases with no such run are skipped and
listed. A matched run without an answer gives a row with an error instead of a verdict.

Repeats and the judge: promptfoo runs each case GATE_REPEATS times (uncached); a case passes only if
every repeat passes (pass^N), and one whose repeats disagree is stored as flaky, a failure
(combine_repeats). The gate run records the judge model, endpoint, rubric version and the judge's
calibration when it started (reviews.calibration.gate_snapshot).

Failure is visible and fast: promptfoo missing, promptfoo exiting without results (a malformed
config), the time limit (GATE_TIMEOUT_SECONDS), a judge that does not answer (bounded retries
and a per-request timeout) all end with status failed and a readable reason; Re-run queues the
same gate run again. promptfoo's exit code 100 only means that some test failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from loopsite.llm import endpoint
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, require_role
from runs.models import Harness, Run

from .models import Cycle, EvalCase, GateRow, GateRun
from .promptfoo import JUDGE_ERROR, PromptfooError, judge_errors, provider_entry, run_config
from .promptfoo import parse_results  # noqa: F401 - the gate's results reader, as before
from .suite import promptfoo_test, suite_cases

log = logging.getLogger(__name__)

WAITING_STALE_SECONDS = 60  # a waiting gate run not checked for this long lost its poll

# The gate cannot start or finish as things stand; the message is shown on the gate page.
GateError = PromptfooError


# --- what the gate runs -------------------------------------------------------------------------------


def scope_runs(gate_run: GateRun) -> list[Run]:
    """The runs whose answers this gate run may judge."""
    queryset = gate_run.cycle.runs.all() if gate_run.cycle_id else Run.objects.filter(harness_id=gate_run.harness_id)
    return list(queryset.select_related("question"))


def match_runs(cases: list[EvalCase], runs: list[Run]) -> dict[int, Run | None]:
    """case pk -> the run whose answer it judges: its source run when in `runs`, else the latest run of
    the same question on the same dataroom (succeeded runs first), else None."""
    by_pk = {run.pk: run for run in runs}
    ordered = sorted(runs, key=lambda run: (run.status == Run.Status.SUCCEEDED, run.finished_at or run.created_at,
                                            run.pk), reverse=True)
    by_question: dict[tuple[int, int], Run] = {}
    for run in ordered:
        by_question.setdefault((run.question_id, run.dataroom_id), run)
    matched: dict[int, Run | None] = {}
    for case in cases:
        source = case.source_run
        matched[case.pk] = by_pk.get(case.source_run_id) or by_question.get((source.question_id, source.dataroom_id))
    return matched


def has_answer(run: Run) -> bool:
    return run.status == Run.Status.SUCCEEDED and bool((run.final_answer or "").strip())


def no_answer_reason(run: Run) -> str:
    if run.status == Run.Status.SUCCEEDED:
        return f"Run #{run.pk} finished without an answer."
    if run.status == Run.Status.FAILED:
        return f"Run #{run.pk} failed, so there is no answer to judge: {(run.last_error or 'no reason stored')[:300]}"
    return f"Run #{run.pk} is still {run.get_status_display().lower()}."


def build_gate_config(*, cases, answers_by_case: dict[int, Run]) -> dict[str, Any]:
    """A promptfoo config: one test per case on the run it is matched to (reviews.suite.promptfoo_test),
    answered by the stored-answer provider (provider.py reading answers.json beside the config)."""
    tests = []
    for case in cases:
        run = answers_by_case[case.pk]
        test = promptfoo_test(case, run)
        test["vars"].pop("answer", None)  # the provider serves it from answers.json
        test["vars"]["run_id"] = run.pk
        test["metadata"].update(run_id=run.pk, source_run=case.source_run_id)
        tests.append(test)
    return {
        "description": f"Loopsite gate: {len(tests)} approved case(s) on stored answers",
        "prompts": ["{{question}}"],
        "providers": [provider_entry()],
        "tests": tests,
    }


def gate_answers(runs) -> dict[str, dict[str, str]]:
    """answers.json: run pk -> the run's stored answer, question and trace id."""
    return {str(run.pk): {"answer": run.final_answer or "", "question": run.question.text, "trace_id": run.trace_id}
            for run in runs}


@dataclass
class Plan:
    """What a gate run will judge: promptfoo tests, rows the app fills in itself, skipped cases."""

    tested: list[EvalCase] = field(default_factory=list)
    answers_by_case: dict[int, Run] = field(default_factory=dict)
    unanswered: list[tuple[EvalCase, Run]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    order: dict[int, int] = field(default_factory=dict)


def plan_gate(gate_run: GateRun) -> Plan:
    cases = list(suite_cases(agent=gate_run.harness.agent).select_related("source_run"))
    matched = match_runs(cases, scope_runs(gate_run))
    scope = f"cycle {gate_run.cycle_id}" if gate_run.cycle_id else f"harness {gate_run.harness.version}"
    plan = Plan(order={case.pk: index for index, case in enumerate(cases)})
    for case in cases:
        run = matched[case.pk]
        if run is None:
            plan.skipped.append({"case_id": case.pk, "eval_id": case.eval_id, "title": case.title,
                                 "reason": f"No run of its question in {scope}."})
        elif has_answer(run):
            plan.tested.append(case)
            plan.answers_by_case[case.pk] = run
        else:
            plan.unanswered.append((case, run))
    return plan


# --- requesting, polling and re-running ---------------------------------------------------------------


def enqueue(gate_run: GateRun) -> None:
    from .tasks import run_gate_task

    run_gate_task.delay_on_commit(gate_run.pk)


def active_gate(*, cycle: Cycle | None = None, harness: Harness | None = None, kind: str = GateRun.Kind.BASELINE):
    queryset = GateRun.objects.filter(status__in=GateRun.ACTIVE_STATUSES, kind=kind)
    queryset = queryset.filter(cycle=cycle) if cycle is not None else queryset.filter(cycle__isnull=True, harness=harness)
    return queryset.order_by("created_at", "pk").first()


def request_gate(*, cycle: Cycle | None = None, harness: Harness | None = None, user,
                 kind: str = GateRun.Kind.BASELINE, baseline: GateRun | None = None) -> GateRun:
    """Queue a gate run on a cycle's answers, or (no cycle) on `harness`'s latest answers per question.

    Idempotent while one of the same kind is active there: that one is returned. A candidate gate
    run waits (status waiting) until its cycle's runs have finished. `user` None: started by the app.
    """
    if user is not None:
        require_role(user, APPROVER, ENGINEER)
    if cycle is None and harness is None:
        raise ValueError("A gate run needs a cycle or a harness version.")
    with transaction.atomic():
        if cycle is not None:
            cycle = Cycle.objects.select_for_update().select_related("harness").get(pk=cycle.pk)
            harness = cycle.harness
        else:
            harness = Harness.objects.select_for_update().get(pk=harness.pk)
        active = active_gate(cycle=cycle, harness=harness, kind=kind)
        if active is not None:
            return active
        waiting = kind == GateRun.Kind.CANDIDATE
        gate_run = GateRun.objects.create(
            cycle=cycle, harness=harness, kind=kind, baseline=baseline, requested_by=user,
            status=GateRun.Status.WAITING if waiting else GateRun.Status.QUEUED, heartbeat_at=timezone.now(),
        )
        where = f"cycle {cycle.pk}" if cycle is not None else f"the latest answers of {harness.version}"
        AuditEvent.record(
            actor=user, action="gate.request", obj=gate_run,
            summary=f"{gate_run.get_kind_display()} gate run {gate_run.pk} requested on {where}"
                    + (f" against gate run {baseline.pk}" if baseline is not None else ""),
            after={"gate_run": gate_run.pk, "harness": harness.version, "cycle": cycle.pk if cycle else None,
                   "kind": kind, "baseline": baseline.pk if baseline is not None else None},
        )
        enqueue(gate_run)
    return gate_run


def rerun_gate(*, gate_run: GateRun, user) -> bool:
    """Queue a finished gate run again (approvers and engineers). False while it is still active."""
    require_role(user, APPROVER, ENGINEER)
    with transaction.atomic():
        if not gate_run.requeue(by=user):
            return False
        enqueue(gate_run)
    return True


def runs_still_active(gate_run: GateRun) -> int:
    if not gate_run.cycle_id:
        return 0
    return Run.objects.filter(cycles=gate_run.cycle_id, status__in=Run.ACTIVE_STATUSES).count()


def poll_waiting(*, gate_run: GateRun) -> bool:
    """A waiting gate run: queued once none of its cycle's runs is queued or running (True), else
    checked again in GATE_POLL_SECONDS by re-enqueueing the task (False). Of two deliveries of
    the same poll only one re-enqueues: the conditional UPDATE on heartbeat_at decides."""
    now = timezone.now()
    row = GateRun.objects.filter(pk=gate_run.pk, status=GateRun.Status.WAITING)
    if not runs_still_active(gate_run):
        return bool(row.update(status=GateRun.Status.QUEUED, heartbeat_at=now))
    if row.filter(Q(heartbeat_at=gate_run.heartbeat_at) if gate_run.heartbeat_at else Q(heartbeat_at__isnull=True)
                  ).update(heartbeat_at=now):
        from .tasks import run_gate_task

        run_gate_task.apply_async((gate_run.pk,), countdown=settings.GATE_POLL_SECONDS)
    return False


def release_when_runs_finish(sender, item, **kwargs) -> int:
    """loopsite.work.work_finished for a run: a waiting gate run of one of its cycles is queued as soon as the
    last of that cycle's runs has finished, not at its next poll. Returns how many were queued."""
    waiting = GateRun.objects.filter(status=GateRun.Status.WAITING, cycle__runs=item.pk).distinct()
    return sum(1 for gate_run in waiting if not runs_still_active(gate_run) and _release(gate_run, now=timezone.now()))


def _release(gate_run: GateRun, *, now) -> bool:
    """A waiting gate run whose runs have finished -> queued, its task enqueued. Conditional, so of concurrent
    callers (the run's finish, the sweep) only one acts."""
    if not GateRun.objects.filter(pk=gate_run.pk, status=GateRun.Status.WAITING).update(
            status=GateRun.Status.QUEUED, heartbeat_at=now):
        return False
    enqueue(gate_run)
    return True


def gate_when_decided(*, cycle_id: int, user) -> None:
    """Called when an eval proposal is approved or rejected: once the transaction commits, start the
    gate if no proposal of the cycle is left undecided (and AUTO_GATE is on). Never breaks the decision."""
    transaction.on_commit(partial(_start_if_decided, cycle_id, user))


def _start_if_decided(cycle_id: int, user) -> GateRun | None:
    if not settings.AUTO_GATE:
        return None
    try:
        cycle = Cycle.objects.get(pk=cycle_id)
        statuses = set(cycle.eval_cases.values_list("status", flat=True))
        if EvalCase.Status.PROPOSED in statuses or EvalCase.Status.APPROVED not in statuses:
            return None
        return request_gate(cycle=cycle, user=user)
    except Exception:  # noqa: BLE001 - the decision stands even if the gate cannot start
        log.exception("cycle %s: could not start the gate after the last eval decision", cycle_id)
        return None


def on_gate_finished(gate_run: GateRun) -> None:
    """The one place that reacts to a finished gate run (succeeded or failed).

    The HALO step will be chained from here (e.g. request an optimization for a succeeded
    baseline gate run of a cycle). Keep it quick and let nothing in here fail the gate run.
    """
    log.info("gate run %s finished: %s (%s/%s passed)", gate_run.pk, gate_run.status, gate_run.passed, gate_run.total)
    from .optimization import halo_after_gate  # HALO starts on a cycle's succeeded gate (AUTO_HALO)

    halo_after_gate(gate_run)


# --- running the gate (reviews.promptfoo runs the CLI) ----------------------------------------------


class _Lost(Exception):
    """The gate run stopped being ours while it ran (the sweep re-queued or failed it): keep nothing."""


def combine_repeats(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """promptfoo's rows (one per test and repeat) -> one row per test, pass^N: it passes only if every
    repeat passed without an error. Repeats that disagree make it flaky (a failure, never a pass). The
    row shows its first failing repeat (else its first), the lowest score, and every repeat's outcome."""
    by_test: dict[Any, list[dict[str, Any]]] = {}
    for item in parsed:
        identity = (item.get("metadata") or {}).get("test_index")  # parse_results numbers rows by position otherwise
        if identity is None:
            identity = (item.get("case_id"), item.get("run_id"), item.get("key"))
        by_test.setdefault(identity, []).append(item)
    combined = []
    for repeats in by_test.values():
        repeats.sort(key=lambda item: item.get("repeat_index") or 0)
        errored = next((item for item in repeats if item["error"]), None)
        failing = next((item for item in repeats if not item["passed"]), None)
        shown = errored or failing or repeats[0]
        passes = sum(1 for item in repeats if item["passed"] and not item["error"])
        flaky = errored is None and 0 < passes < len(repeats)
        scores = [item["score"] for item in repeats if item["score"] is not None]
        reason = shown["reason"]
        if flaky:
            reason = f"Flaky: passed {passes} of {len(repeats)} repeats. {reason}"[:4000]
        combined.append({
            **shown,
            "passed": errored is None and passes == len(repeats),
            "score": min(scores) if scores else None,
            "reason": reason,
            "repeats": len(repeats), "passes": passes, "flaky": flaky,
            "repeat_results": [
                {"repeat": index + 1, "passed": item["passed"] and not item["error"], "score": item["score"],
                 "reason": item["reason"][:500], "error": item["error"][:500]}
                for index, item in enumerate(repeats)
            ],
        })
    return combined


def _store(gate_run: GateRun, *, plan: Plan, parsed: list[dict[str, Any]], error: str = "", **fields) -> None:
    """Replace the gate run's rows and finish it (succeeded, or failed with `error`), if it is still ours."""
    cases = {case.pk: case for case in plan.tested} | {case.pk: case for case, _ in plan.unanswered}
    runs = {run.pk: run for run in plan.answers_by_case.values()} | {run.pk: run for _, run in plan.unanswered}
    rows: list[GateRow] = []
    for item in combine_repeats(parsed):
        case = cases.get(item["case_id"])
        if case is None:
            continue
        rows.append(GateRow(
            gate_run=gate_run, eval_case=case, run=runs.get(int(item["run_id"])) if item["run_id"] else None,
            position=plan.order.get(case.pk, 0), eval_id=case.eval_id, title=case.title, passed=item["passed"],
            score=item["score"], reason=item["reason"], assertions=item["assertions"], error=item["error"],
            repeats=item["repeats"], passes=item["passes"], flaky=item["flaky"], repeat_results=item["repeat_results"],
        ))
    for case, run in plan.unanswered:
        rows.append(GateRow(gate_run=gate_run, eval_case=case, run=run, position=plan.order.get(case.pk, 0),
                            eval_id=case.eval_id, title=case.title, passed=False, error=no_answer_reason(run)))
    errors = sum(1 for row in rows if row.error)
    passed = sum(1 for row in rows if row.passed and not row.error)

    def replace_rows() -> None:
        GateRow.objects.filter(gate_run=gate_run).delete()
        GateRow.objects.bulk_create(rows)

    if not gate_run.finish(error=error, store=replace_rows, total=len(rows), passed=passed, errors=errors,
                           failed=len(rows) - passed - errors, flaky=sum(1 for row in rows if row.flaky), **fields):
        raise _Lost()


def run_gate(*, gate_run: GateRun) -> GateRun:
    """Run a claimed gate run to its end; every outcome is stored on the row."""
    ep = endpoint()
    from .calibration import gate_snapshot, rubric_version  # the judge it runs under, and its calibration then

    judge = dict(judge_model=settings.OPENAI_JUDGE_MODEL, endpoint=ep.base_url, judge_rubric_hash=rubric_version(),
                 judge_calibration=gate_snapshot(), repeats=max(1, int(settings.GATE_REPEATS)))
    GateRun.objects.filter(pk=gate_run.pk).update(**judge)
    for name, value in judge.items():
        setattr(gate_run, name, value)
    try:
        _run(gate_run)
    except _Lost:
        log.warning("gate run %s is no longer running here; its results were discarded", gate_run.pk)
        return gate_run
    except GateError as exc:
        _fail(gate_run, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, re-runnable failure, not a stuck row
        log.exception("gate run %s failed", gate_run.pk)
        _fail(gate_run, f"Unexpected error ({type(exc).__name__}): {exc}")
    gate_run.refresh_from_db()
    try:
        on_gate_finished(gate_run)
    except Exception:  # noqa: BLE001
        log.exception("gate run %s: on_gate_finished failed", gate_run.pk)
    return gate_run


def _fail(gate_run: GateRun, error: str, **fields) -> None:
    """Failed with a readable reason and no rows, if this attempt still owns the row."""
    log.warning("gate run %s failed: %s", gate_run.pk, error)
    gate_run.fail(error, store=lambda: GateRow.objects.filter(gate_run=gate_run).delete(),
                  **{"total": 0, "passed": 0, "failed": 0, "errors": 0, "flaky": 0, **fields})


def _promptfoo(gate_run: GateRun, *, config: dict[str, Any], answers: dict[str, Any], what: str, prefix: str):
    """promptfoo's outcome for `config`, run in the gate run's scratch directory (removed by the next attempt or
    the sweep if this worker dies); _Lost if the gate run stopped being ours meanwhile."""
    with gate_run.scratch_dir() as scratch:
        outcome = run_config(config=config, answers=answers, beat=gate_run.beat, what=what, prefix=prefix,
                             temp_root=scratch, repeat=gate_run.repeats)
    if outcome.lost:
        raise _Lost()
    return outcome


def _run(gate_run: GateRun) -> None:
    from .endpoint import is_endpoint_gate, run_endpoint_gate

    if is_endpoint_gate(gate_run):  # a candidate evaluated through its agent's HTTP endpoint
        run_endpoint_gate(gate_run)
        return
    plan = plan_gate(gate_run)
    if not plan.tested and not plan.unanswered:
        raise GateError("Nothing to judge: the regression suite has no approved case with a run of its question here"
                        + (f" ({len(plan.skipped)} case(s) skipped)." if plan.skipped else "."))
    config = build_gate_config(cases=plan.tested, answers_by_case=plan.answers_by_case)
    stored_config = {**config, "skipped": plan.skipped}
    if not plan.tested:  # every matched run lacks an answer: nothing for promptfoo to do
        _store(gate_run, plan=plan, parsed=[], config=stored_config, results=None, log_tail="", returncode=None)
        return
    outcome = _promptfoo(gate_run, config=config, answers=gate_answers(plan.answers_by_case.values()),
                         what="the gate", prefix=f"loopsite-gate-{gate_run.pk}-")
    common = dict(config=stored_config, log_tail=outcome.log_tail, returncode=outcome.returncode)
    if outcome.data is None:  # stopped at the time limit, or no results file: nothing to keep
        _fail(gate_run, outcome.error, **common, results=None)
        return
    parsed = outcome.rows
    error = outcome.error
    if not error and (failing := [item for item in parsed if item["error"]]):
        judge = judge_errors(failing)
        if judge:
            error = (f"The judge ({settings.OPENAI_JUDGE_MODEL} at {endpoint().base_url}) did not answer for "
                     f"{len(judge)} of {len(parsed)} test(s): {judge[0]['error'][len(JUDGE_ERROR):][:500]} "
                     f"Check the model endpoint, then re-run the gate.")
        else:
            error = f"promptfoo reported an error for {len(failing)} of {len(parsed)} test(s): {failing[0]['error'][:500]}"
    _store(gate_run, plan=plan, parsed=parsed, error=error, results=outcome.data, **common)


# --- the sweep -----------------------------------------------------------------------------------------


def sweep_waiting(*, now) -> dict[str, int]:
    """The gate's part of loopsite.work.sweep_stale_work (which recovers lost workers and lost messages
    of every kind): a waiting gate run is queued once its runs have finished, and its poll is enqueued
    again if it was not checked for WAITING_STALE_SECONDS. Conditional UPDATEs, so concurrent sweeps act once."""
    counts = {"released": 0, "repolled": 0}
    waiting = GateRun.objects.filter(status=GateRun.Status.WAITING)
    for gate_run in waiting:
        if not runs_still_active(gate_run):
            counts["released"] += _release(gate_run, now=now)
            continue
        checked_before = now - timedelta(seconds=max(WAITING_STALE_SECONDS, 10 * settings.GATE_POLL_SECONDS))
        lost_poll = Q(heartbeat_at__lt=checked_before) | Q(heartbeat_at__isnull=True)
        if waiting.filter(lost_poll, pk=gate_run.pk).update(heartbeat_at=now):
            counts["repolled"] += 1
            enqueue(gate_run)
    return counts
