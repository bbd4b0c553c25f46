"""Back-tests: every eval proposal run, before anyone approves it, on the answers it should decide.

    request_backtest(case, purpose, user)   a queued BackTestRun (the queued one if there is one)
      -> tasks.backtest_task                claims it, then run_backtest(backtest_run)
    run_backtest(backtest_run)              (a repair: asks the generator for a better version first)
                                            runs the case through reviews.promptfoo, the gate's path, on:
                                            its source run's stored answer, its fail example, its pass
                                            example, and every other reviewed run of its question on the
                                            same dataroom; stores one BackTest row per answer and the verdict
    backtest_state(case)                    what the page, the list and approval need to know
    backtest_states(cases)                  the same of many cases at once, without the rows (the lists)

What is expected: a case built from feedback whose verdict is fail or mixed must fail its source
answer (the answer the reviewers failed) and its fail example, and pass its pass example; then it
"catches the failure it came from". From passing feedback, its source answer is expected to pass.
Another reviewed run is informational: expected by that run's own approved verdict.

A proposal whose first back-test (after generation) does not catch its failure, or fails its own
pass example, is sent back to the generator once with the back-test rows (purpose repair). The
generator's version is back-tested too, and the better of the two is kept; both are in the case's
history. A person's edit is never overwritten.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from loopsite.llm import endpoint
from loopsite.models import AuditEvent
from runs.models import Run

from .models import BackTest, BackTestRun, EvalCase, Feedback
from .promptfoo import JUDGE_ERROR, PromptfooError, Target, judge_errors, last_lines, run_promptfoo_tests

log = logging.getLogger(__name__)

EXCERPT_CHARS = 600
FAILING_VERDICTS = (Feedback.Verdict.FAIL, Feedback.Verdict.MIXED)
DECIDING_TARGETS = (BackTest.Target.SOURCE_RUN, BackTest.Target.FAIL_EXAMPLE, BackTest.Target.PASS_EXAMPLE)


# --- what a case is tested on --------------------------------------------------------------------------


@dataclass
class TargetSpec:
    kind: str
    answer: str
    expected: str  # BackTest.Expected
    because: str
    run: Run | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.run.pk}" if self.run is not None else self.kind


def _verdict_of(feedback: list[Feedback]) -> str:
    """The strongest verdict of approved feedback: fail, then mixed, then pass ('' when there is none)."""
    verdicts = {fb.verdict for fb in feedback if fb.status == Feedback.Status.APPROVED and fb.verdict}
    for verdict in (Feedback.Verdict.FAIL, Feedback.Verdict.MIXED, Feedback.Verdict.PASS):
        if verdict in verdicts:
            return verdict
    return ""


def source_verdict(case: EvalCase) -> str:
    return _verdict_of(list(case.source_feedback.all()))


def _expected_by(verdict: str) -> str:
    if verdict in FAILING_VERDICTS:
        return BackTest.Expected.FAIL
    if verdict == Feedback.Verdict.PASS:
        return BackTest.Expected.PASS
    return BackTest.Expected.NONE


def other_reviewed_runs(case: EvalCase) -> list[tuple[Run, str]]:
    """(run, its approved verdict) for every other run of the same agent on the case's question and the same
    dataroom (none for imported runs, whose question is their input) with approved (merged) feedback, in any
    cycle, that has an answer."""
    source = case.source_run
    runs = (
        Run.objects.filter(agent_id=source.agent_id, question_id=source.question_id, dataroom_id=source.dataroom_id,
                           status=Run.Status.SUCCEEDED,
                           feedback__is_merged=True, feedback__status=Feedback.Status.APPROVED)
        .exclude(pk=source.pk).exclude(final_answer="").select_related("question").distinct().order_by("pk")
    )
    found = []
    for run in runs:
        feedback = list(Feedback.objects.filter(run=run, is_merged=True, status=Feedback.Status.APPROVED)
                        .order_by("-approved_at", "-pk")[:1])
        found.append((run, _verdict_of(feedback)))
    return found


def targets(case: EvalCase) -> list[TargetSpec]:
    verdict = source_verdict(case)
    specs: list[TargetSpec] = []
    source = case.source_run
    if source.status == Run.Status.SUCCEEDED and (source.final_answer or "").strip():
        expected = _expected_by(verdict)
        because = (f"its source feedback's verdict is {verdict}" if verdict else "its source has no approved verdict")
        specs.append(TargetSpec(BackTest.Target.SOURCE_RUN, source.final_answer, expected, because, run=source))
    if case.fail_example.strip():
        specs.append(TargetSpec(BackTest.Target.FAIL_EXAMPLE, case.fail_example, BackTest.Expected.FAIL,
                                "it is the case's own fail example"))
    if case.pass_example.strip():
        specs.append(TargetSpec(BackTest.Target.PASS_EXAMPLE, case.pass_example, BackTest.Expected.PASS,
                                "it is the case's own pass example"))
    for run, run_verdict in other_reviewed_runs(case):
        specs.append(TargetSpec(BackTest.Target.OTHER_RUN, run.final_answer, _expected_by(run_verdict),
                                f"that run's approved verdict is {run_verdict}" if run_verdict else "informational",
                                run=run))
    return specs


# --- requesting ------------------------------------------------------------------------------------------


def request_backtest(*, case: EvalCase, purpose: str = BackTestRun.Purpose.RERUN, user=None,
                     repair: dict[str, Any] | None = None) -> BackTestRun:
    """Queue a back-test of the case as it will be when the worker takes it. While one is queued (not yet
    running) for the case, that one is returned: it will test the latest version anyway. A repair is
    always its own row."""
    with transaction.atomic():
        locked = EvalCase.objects.select_for_update().get(pk=case.pk)
        if purpose != BackTestRun.Purpose.REPAIR:
            queued = locked.backtest_runs.filter(status=BackTestRun.Status.QUEUED).exclude(
                purpose=BackTestRun.Purpose.REPAIR).order_by("created_at", "pk").first()
            if queued is not None:
                return queued
        run = BackTestRun.objects.create(
            case=locked, purpose=purpose, requested_by=user, case_hash=locked.checks_hash(),
            rubric_hash=locked.rubric_hash(), revision=locked.revisions.count(), repair=repair or {},
            heartbeat_at=timezone.now(),
        )
        if user is not None:
            AuditEvent.record(actor=user, action="backtest.request", obj=locked,
                              summary=f"Back-test of eval {locked.eval_id} requested ({run.get_purpose_display().lower()})",
                              after={"backtest_run": run.pk, "purpose": purpose})
        BackTestRun.enqueue_work(run.pk)
    return run


def rerun_backtest(*, case: EvalCase, user) -> BackTestRun:
    """"Re-run back-test" on the case page (approvers and engineers)."""
    from loopsite.roles import APPROVER, ENGINEER, require_role

    require_role(user, APPROVER, ENGINEER)
    return request_backtest(case=case, purpose=BackTestRun.Purpose.RERUN, user=user)


# --- running -------------------------------------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Verdict:
    catches: bool | None
    pass_example_ok: bool | None
    expects_failure: bool
    met: int


def verdict_of(rows: list[BackTest], *, expects_failure: bool) -> Verdict:
    deciding = [row for row in rows if row.target in DECIDING_TARGETS]
    met = sum(1 for row in deciding if row.meets_expectation is True)
    pass_rows = [row for row in rows if row.target == BackTest.Target.PASS_EXAMPLE]
    pass_ok = None if not pass_rows or pass_rows[0].outcome == "error" else pass_rows[0].outcome == "pass"
    catches = None
    if expects_failure:
        has_source = any(row.target == BackTest.Target.SOURCE_RUN for row in deciding)
        if has_source and not any(row.outcome == "error" for row in deciding):
            catches = all(row.meets_expectation is True for row in deciding)
    return Verdict(catches=catches, pass_example_ok=pass_ok, expects_failure=expects_failure, met=met)


def _rows_for(backtest_run: BackTestRun, case: EvalCase, specs: list[TargetSpec], parsed: list[dict[str, Any]]
              ) -> list[BackTest]:
    by_index = {}
    for item in parsed:
        by_index.setdefault(item["test_index"], item)  # one repeat: the first
    rows = []
    for index, spec in enumerate(specs):
        item = by_index.get(index)
        rows.append(BackTest(
            backtest_run=backtest_run, case=case, target=spec.kind, run=spec.run, position=index,
            answer_hash=_hash(spec.answer), answer_excerpt=spec.answer[:EXCERPT_CHARS], expected=spec.expected,
            expected_because=spec.because[:200],
            passed=None if item is None or item["error"] else item["passed"],
            score=item["score"] if item else None, reason=item["reason"] if item else "",
            assertions=item["assertions"] if item else [],
            error=(item["error"] if item else "promptfoo returned no result for this answer."),
            case_hash=backtest_run.case_hash, rubric_hash=backtest_run.rubric_hash, revision=backtest_run.revision,
        ))
    return rows


def run_backtest(*, backtest_run: BackTestRun) -> BackTestRun:
    """Run a claimed back-test to its end; every outcome is stored on the row."""
    try:
        if backtest_run.purpose == BackTestRun.Purpose.REPAIR and not _repair(backtest_run):
            return backtest_run
        _run(backtest_run)
    except PromptfooError as exc:
        backtest_run.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, re-runnable failure, not a stuck row
        log.exception("back-test %s failed", backtest_run.pk)
        backtest_run.fail(f"Unexpected error ({type(exc).__name__}): {exc}")
    backtest_run.refresh_from_db()
    if backtest_run.is_finished:
        try:
            _after(backtest_run)
        except Exception:  # noqa: BLE001 - the back-test stands even if the follow-up cannot start
            log.exception("back-test %s: follow-up failed", backtest_run.pk)
    return backtest_run


def _run(backtest_run: BackTestRun) -> None:
    case = EvalCase.objects.select_related("source_run__question", "cycle").get(pk=backtest_run.case_id)
    specs = targets(case)
    expects_failure = source_verdict(case) in FAILING_VERDICTS
    fields = dict(case_hash=case.checks_hash(), rubric_hash=case.rubric_hash(), revision=case.revisions.count(),
                  judge_model=settings.OPENAI_JUDGE_MODEL if case.rubric.strip() else "", endpoint=endpoint().base_url,
                  expects_failure=expects_failure)
    BackTestRun.objects.filter(pk=backtest_run.pk).update(**fields)
    for name, value in fields.items():
        setattr(backtest_run, name, value)
    if problems := case.problems():
        backtest_run.fail("This case cannot run as a promptfoo test: " + "; ".join(problems) + ".")
        return
    if not specs:
        backtest_run.fail("Nothing to back-test: the source run has no answer and the case has no examples.")
        return
    tests = [(case, Target(key=spec.key, answer=spec.answer, question=case.source_run.question.text,
                           trace_id=spec.run.trace_id if spec.run is not None else "",
                           metadata={"target": spec.kind, "run_id": spec.run.pk if spec.run is not None else None}))
             for spec in specs]
    result = run_promptfoo_tests(tests=tests, beat=backtest_run.beat, what="the back-test",
                                 description=f"Loopsite back-test of {case.eval_id}",
                                 prefix=f"loopsite-backtest-{backtest_run.pk}-")
    if result.lost:
        log.warning("back-test %s is no longer running here; its results were discarded", backtest_run.pk)
        return
    if result.data is None:
        backtest_run.fail(result.error, log_tail=result.log_tail)
        return
    rows = _rows_for(backtest_run, case, specs, result.rows)
    verdict = verdict_of(rows, expects_failure=expects_failure)
    error = result.error
    if not error and (judge := judge_errors(result.rows)):
        error = (f"The judge ({settings.OPENAI_JUDGE_MODEL} at {endpoint().base_url}) did not answer for "
                 f"{len(judge)} of {len(rows)} answer(s): {judge[0]['error'][len(JUDGE_ERROR):][:300]} "
                 f"Check the model endpoint, then re-run the back-test.")
    elif not error and (failing := [row for row in rows if row.error]):
        error = f"promptfoo reported an error for {len(failing)} of {len(rows)} answer(s): {failing[0].error[:300]}"

    def store() -> None:
        BackTest.objects.filter(backtest_run=backtest_run).delete()
        BackTest.objects.bulk_create(rows)

    backtest_run.finish(error=error, store=store, catches=verdict.catches, pass_example_ok=verdict.pass_example_ok,
                        met=verdict.met, log_tail=result.log_tail if error else last_lines(result.log_tail))


# --- repair: once, after generation, in the worker -----------------------------------------------------


def needs_repair(backtest_run: BackTestRun) -> bool:
    """A generated proposal its first back-test speaks against, not yet sent back, untouched by people."""
    case = backtest_run.case
    return (
        backtest_run.purpose == BackTestRun.Purpose.GENERATED
        and backtest_run.status == BackTestRun.Status.SUCCEEDED
        and (backtest_run.catches is False or backtest_run.pass_example_ok is False)
        and case.status == EvalCase.Status.PROPOSED
        and not case.revisions.filter(edited_by__isnull=False).exists()
        and not case.backtest_runs.filter(purpose=BackTestRun.Purpose.REPAIR).exists()
        and backtest_run.case_hash == case.checks_hash()
    )


def _after(backtest_run: BackTestRun) -> None:
    if backtest_run.purpose == BackTestRun.Purpose.REPAIR:
        if "repaired" in backtest_run.repair and "kept" not in backtest_run.repair:
            keep_better(backtest_run)
    elif needs_repair(backtest_run):
        request_backtest(case=backtest_run.case, purpose=BackTestRun.Purpose.REPAIR,
                         repair={"compared_with": backtest_run.pk})


def _repair(backtest_run: BackTestRun) -> bool:
    """Ask the generator for a corrected version and put it on the case (a revision by the generator).
    True when there is a new version to back-test; otherwise the repair run is finished here."""
    from .generation import GenerationError, repair_eval

    case = EvalCase.objects.select_related("source_run__question", "source_run__harness").get(pk=backtest_run.case_id)
    compared = BackTestRun.objects.filter(pk=backtest_run.repair.get("compared_with")).first()
    if compared is None:
        compared = case.backtest_runs.filter(status=BackTestRun.Status.SUCCEEDED).exclude(pk=backtest_run.pk).first()
    if compared is None:
        backtest_run.fail("Nothing to repair against: the case has no finished back-test.")
        return False
    edits_seen = case.revisions.count()
    original = case.content()
    try:
        repaired, model = repair_eval(case=case, backtest_run=compared, heartbeat=backtest_run)
    except GenerationError as exc:
        backtest_run.fail(f"The generator could not repair the case: {exc}",
                          repair={**backtest_run.repair, "compared_with": compared.pk, "original": original,
                                  "raw_output": exc.raw_output[-20000:]})
        return False
    info = {"compared_with": compared.pk, "original": original, "repaired": repaired, "model": model}
    changed = case.revise(content=repaired, note=f"Repaired by the generator ({model}) after back-test {compared.pk}",
                          edits_seen=edits_seen)
    if not changed:
        why = ("the generator returned the same checks" if case.status == EvalCase.Status.PROPOSED
               and case.revisions.count() == edits_seen else "the case changed meanwhile")
        backtest_run.finish(repair={**info, "kept": "original", "why": why}, catches=compared.catches,
                            pass_example_ok=compared.pass_example_ok, met=compared.met,
                            case_hash=compared.case_hash, rubric_hash=compared.rubric_hash)
        return False
    BackTestRun.objects.filter(pk=backtest_run.pk).update(repair=info)
    backtest_run.repair = info
    return True


def _score(run: BackTestRun) -> tuple:
    return (run.catches is True, run.pass_example_ok is not False, run.met)


def keep_better(backtest_run: BackTestRun) -> str:
    """After the repaired version's back-test: keep it if it back-tests strictly better than the original,
    else put the original back (another revision). Returns which was kept."""
    info = dict(backtest_run.repair)
    compared = BackTestRun.objects.filter(pk=info.get("compared_with")).first()
    if compared is None or "original" not in info:
        return "repaired"
    kept = "repaired" if _score(backtest_run) > _score(compared) else "original"
    if kept == "original":
        case = backtest_run.case
        case.revise(content=info["original"], edits_seen=case.revisions.count(),
                    note=f"Kept the original: the repair did not back-test better (back-test {backtest_run.pk} vs {compared.pk})")
    BackTestRun.objects.filter(pk=backtest_run.pk).update(repair={**info, "kept": kept})
    AuditEvent.record(actor=None, action="backtest.repair", obj=backtest_run.case,
                      summary=f"Repair of eval {backtest_run.case.eval_id}: kept the {kept} version",
                      after={"kept": kept, "original_backtest": compared.pk, "repair_backtest": backtest_run.pk})
    return kept


# --- what the pages ask ---------------------------------------------------------------------------------


@dataclass
class BackTestState:
    latest: BackTestRun | None = None  # the most recent back-test row, whatever its state
    evidence: BackTestRun | None = None  # the latest back-test with results on the present version
    previous: BackTestRun | None = None  # else the latest with results on an earlier version (stale)
    rows: list[BackTest] = field(default_factory=list)
    expects_failure: bool = False
    repair: BackTestRun | None = None  # the generator's repair, if the proposal was sent back

    @property
    def evidence_rows(self) -> list[BackTest]:
        return self.rows if self.evidence is not None else []

    @property
    def active(self) -> bool:
        return self.latest is not None and self.latest.is_active

    @property
    def stale(self) -> bool:
        return self.evidence is None and self.previous is not None

    @property
    def shown(self) -> BackTestRun | None:
        return self.evidence or self.previous

    @property
    def catches(self) -> bool | None:
        return self.evidence.catches if self.evidence is not None else None

    @property
    def label(self) -> str:
        """yes / no / n/a / stale / running / failed / not run, for the list column and the page head."""
        if self.evidence is not None:
            if not self.evidence.expects_failure:
                return "n/a"
            if self.evidence.catches is None:
                return "undecided"
            return "yes" if self.evidence.catches else "no"
        if self.previous is not None:
            return "stale"
        if self.active:
            return "running" if self.latest.status == BackTestRun.Status.RUNNING else "queued"
        if self.latest is not None and self.latest.status == BackTestRun.Status.FAILED:
            return "failed"
        return "not run"

    @property
    def concern(self) -> str:
        """Why approving the present version needs a written reason ('' when its back-test supports it, or
        when no back-test of it was ever requested, as for cases made before back-tests existed)."""
        if self.evidence is not None:
            problems = []
            if self.evidence.expects_failure and self.evidence.catches is False:
                problems.append("It does not catch the failure it came from.")
            elif self.evidence.expects_failure and self.evidence.catches is None:
                problems.append("Its back-test could not decide whether it catches the failure it came from.")
            if self.evidence.pass_example_ok is False:
                problems.append("It fails its own pass example.")
            if self.evidence.status == BackTestRun.Status.FAILED and not problems:
                problems.append("Its last back-test ended with an error.")
            return " ".join(problems)
        if self.previous is not None:
            return "It changed since its last back-test, and the back-test of this version has not finished."
        if self.latest is not None and self.latest.status == BackTestRun.Status.FAILED:
            return "Its back-test failed, so nothing shows that it catches the failure it came from."
        if self.latest is not None and self.latest.is_active:
            if self.latest.revision:
                return "It was edited and the back-test of this version has not finished."
            return "Its back-test has not finished, so nothing shows yet that it catches the failure it came from."
        return ""


def backtest_state(case: EvalCase) -> BackTestState:
    runs = list(case.backtest_runs.order_by("-created_at", "-pk"))
    with_rows = set(BackTest.objects.filter(backtest_run__in=[run.pk for run in runs])
                    .values_list("backtest_run_id", flat=True).distinct())
    state = _state_of(case, runs, with_rows)
    shown = state.shown
    if shown is not None:
        state.rows = list(shown.rows.select_related("run").order_by("position"))
    return state


def backtest_states(cases: list[EvalCase]) -> dict[int, BackTestState]:
    """`backtest_state` of many cases (the proposals list, the suite page) in two queries, without the rows:
    by case id. Prefetch the cases' `source_feedback`, or each case asks for its own."""
    runs: dict[int, list[BackTestRun]] = {case.pk: [] for case in cases}
    for run in BackTestRun.objects.filter(case_id__in=list(runs)).order_by("-created_at", "-pk"):
        runs[run.case_id].append(run)
    with_rows = set(BackTest.objects.filter(backtest_run__case_id__in=list(runs))
                    .values_list("backtest_run_id", flat=True).distinct())
    return {case.pk: _state_of(case, runs[case.pk], with_rows) for case in cases}


def _state_of(case: EvalCase, runs: list[BackTestRun], with_rows: set[int]) -> BackTestState:
    """The state from the case's back-test runs (newest first) and the ids of those that stored rows."""
    state = BackTestState(latest=runs[0] if runs else None, expects_failure=source_verdict(case) in FAILING_VERDICTS)
    current = case.checks_hash()
    for run in runs:
        if run.pk not in with_rows or run.is_active:
            continue
        if run.case_hash == current:
            state.evidence = run
            break
        if state.previous is None:
            state.previous = run
    if state.evidence is not None:
        state.previous = None
    state.repair = next((run for run in runs if run.purpose == BackTestRun.Purpose.REPAIR), None)
    return state


def catch_summary(*, cases) -> dict[str, int]:
    """For reports (bench/cycle.py): of `cases`, how many catch the failure they came from on their present
    version ("yes"), do not ("no"), are not applicable, or have no current back-test (stale, running, ...)."""
    counts = {"total": 0, "yes": 0, "no": 0, "n/a": 0, "other": 0}
    cases = list(cases)
    states = backtest_states(cases)
    for case in cases:
        label = states[case.pk].label
        counts["total"] += 1
        counts[label if label in ("yes", "no", "n/a") else "other"] += 1
    return counts
