"""The rubric judge, checked against the experts: human labels, the judge's labels, and their agreement.

    human_labels()                       every criterion a reviewed run's approved feedback labels (below)
    request_calibration(user=...)        a queued JudgeCalibration (the active one if there is one)
      -> tasks.calibrate_judge_task      claims it, then run_calibration(calibration=...)
    run_calibration(calibration=...)     the judge grades every criterion through promptfoo's llm-rubric,
                                         exactly as the gate calls it (reviews.promptfoo, the judge provider
                                         and threshold of reviews.suite); the labels replace those of the
                                         same judge
    agreement(...)                       counts, TPR, TNR, Cohen's kappa for one judge
    gate_snapshot() / gate_needs_reason(gate_run)   what a gate run records, and what promotion on it needs

A *judge* is (judge model, endpoint, rubric version). The rubric version (`rubric_version()`) is a hash
of everything that shapes a grading besides the criterion itself: the two criterion templates below,
the llm-rubric threshold, the judge provider's settings and promptfoo's version (whose built-in
grading prompt llm-rubric uses). The same model name behind another endpoint is another judge.

Human labels (one per criterion; `human_pass` answers "does the answer meet the criterion?"). Only
*reviewed runs* count: a run whose latest approved merged feedback has a verdict, and that has a
stored answer for the judge to read.

- verdict: for each case of the regression suite that has a rubric, the criterion is the case's
  rubric as written, on (a) the case's source run and the runs of its source feedback, whatever
  their verdict, and (b) every other reviewed run of the same question on the same dataroom whose
  verdict is pass (an answer the expert passed must satisfy every rubric written for that question;
  an answer failed for some other reason says nothing about this rubric). Human label: pass when
  the verdict is pass; fail when it is fail or mixed (mixed is not an acceptable answer).
- observation: each required observation, criterion OBSERVATION_RUBRIC ("the answer does X").
  Verdict pass: the expert accepted the answer as it is, so it does X (pass). Verdict fail: the
  expert wrote down what the answer failed to do, so it does not do X (fail). Verdict mixed: the
  feedback does not say which observations the answer met, so no label.
- claim: each prohibited claim, criterion CLAIM_RUBRIC ("the answer does not claim Y"). Verdict
  pass: the answer does not make it (pass). Verdict fail: the expert recorded a claim the answer
  made, so the criterion fails. Verdict mixed: no label.

Agreement treats "fail" as the positive class: the judge's job in a gate is to catch failures.
TPR = failures the judge caught / human failures; TNR = passes the judge passed / human passes;
Cohen's kappa = (p_o - p_e) / (1 - p_e) over the 2x2 table. A criterion the judge did not answer
is counted apart (`errors`) and is not a label. A judge is *calibrated* when it has at least
JUDGE_MIN_LABELS labels and kappa >= JUDGE_MIN_KAPPA; kappa is undefined (None, so not
calibrated) when there are no labels or both sides put every label in the same class.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from loopsite.llm import endpoint
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, require_role
from runs.models import Run

from .models import EvalCase, Feedback, FeedbackItem, GateRun, JudgeCalibration, JudgeLabel
from .suite import RUBRIC_THRESHOLD, judge_provider, suite_cases, uses_rubric

log = logging.getLogger(__name__)

OBSERVATION_RUBRIC = "Pass only if the answer does what this expert reviewer's requirement asks:\n- {text}"
CLAIM_RUBRIC = ("The answer must not make the claim this expert reviewer's rule prohibits "
                "(fail if it makes it, in any words):\n- {text}")
BATCH_SIZE = 40  # criteria per promptfoo run; progress is recorded after each


# --- the judge's identity -------------------------------------------------------------------------------


def promptfoo_version() -> str:
    """The installed promptfoo's version (its package.json above the binary), or "" if it is not there."""
    binary = Path(settings.PROMPTFOO_BIN)
    candidates = [binary.resolve().parent, binary.parent.parent / "promptfoo", Path(settings.BASE_DIR) / "node_modules" / "promptfoo"]
    for start in candidates:
        for folder in [start, *start.parents][:4]:
            package = folder / "package.json"
            try:
                data = json.loads(package.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("name") == "promptfoo":
                return str(data.get("version") or "")
    return ""


def rubric_version() -> str:
    """The hash of what shapes a grading besides the criterion (see the module docstring)."""
    provider = judge_provider()
    config = {key: value for key, value in provider.get("config", {}).items() if key != "apiBaseUrl"}
    payload = {
        "observation": OBSERVATION_RUBRIC,
        "claim": CLAIM_RUBRIC,
        "threshold": RUBRIC_THRESHOLD,
        "provider": {"id": provider["id"], "config": config},
        "grader": f"promptfoo {promptfoo_version() or 'unknown'} llm-rubric, built-in rubricPrompt",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def criterion_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Judge:
    model: str
    endpoint: str
    rubric_version: str

    def labels(self):
        return JudgeLabel.objects.filter(judge_model=self.model, endpoint=self.endpoint,
                                         rubric_version=self.rubric_version)


def current_judge() -> Judge:
    """The judge the gate calls now."""
    return Judge(model=settings.OPENAI_JUDGE_MODEL, endpoint=endpoint().base_url, rubric_version=rubric_version())


def rubric_assertion(criterion: str) -> dict[str, Any]:
    """The llm-rubric assertion exactly as reviews.suite.promptfoo_test writes a case's rubric."""
    return {"type": "llm-rubric", "value": criterion, "threshold": RUBRIC_THRESHOLD, "provider": judge_provider()}


# --- human labels -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HumanLabel:
    run: Run
    feedback: Feedback
    kind: str
    criterion: str
    human_pass: bool
    eval_case: EvalCase | None = None

    @property
    def criterion_hash(self) -> str:
        return criterion_hash(self.criterion)

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.run.pk, self.kind, self.criterion_hash)


def has_answer(run: Run) -> bool:
    return run.status == Run.Status.SUCCEEDED and bool((run.final_answer or "").strip())


def reviewed_feedback() -> dict[int, Feedback]:
    """run pk -> the run's latest approved merged feedback with a verdict (over all cycles)."""
    latest: dict[int, Feedback] = {}
    queryset = (Feedback.objects.filter(is_merged=True, status=Feedback.Status.APPROVED).exclude(verdict="")
                .select_related("run__question").prefetch_related("items").order_by("approved_at", "pk"))
    for feedback in queryset:
        latest[feedback.run_id] = feedback
    return {run_pk: feedback for run_pk, feedback in latest.items() if has_answer(feedback.run)}


def labels_from_feedback(feedback: Feedback) -> list[HumanLabel]:
    """The observation and claim labels of one approved feedback (none for a mixed verdict)."""
    if feedback.verdict not in (Feedback.Verdict.PASS, Feedback.Verdict.FAIL):
        return []
    passed = feedback.verdict == Feedback.Verdict.PASS
    labels = []
    for item in feedback.items.all():
        text = " ".join((item.text or "").split())
        if not text:
            continue
        if item.kind == FeedbackItem.Kind.REQUIRED_OBSERVATION:
            labels.append(HumanLabel(run=feedback.run, feedback=feedback, kind=JudgeLabel.Kind.OBSERVATION,
                                     criterion=OBSERVATION_RUBRIC.format(text=text), human_pass=passed))
        elif item.kind == FeedbackItem.Kind.PROHIBITED_CLAIM:
            labels.append(HumanLabel(run=feedback.run, feedback=feedback, kind=JudgeLabel.Kind.CLAIM,
                                     criterion=CLAIM_RUBRIC.format(text=text), human_pass=passed))
    return labels


def verdict_labels(reviewed: dict[int, Feedback], cases: Iterable[EvalCase]) -> list[HumanLabel]:
    """The verdict labels: each suite case's rubric on the reviewed runs it speaks for (module docstring)."""
    by_question: dict[tuple[int, int, int | None], list[Feedback]] = {}  # (agent, question, dataroom or None)
    for feedback in reviewed.values():
        run = feedback.run
        by_question.setdefault((run.agent_id, run.question_id, run.dataroom_id), []).append(feedback)
    labels = []
    for case in cases:
        if not uses_rubric(case):
            continue
        own = {case.source_run_id, *(feedback.run_id for feedback in case.source_feedback.all())}
        source = case.source_run
        key = (source.agent_id, source.question_id, source.dataroom_id)
        for feedback in by_question.get(key, []):
            if feedback.run_id in own or feedback.verdict == Feedback.Verdict.PASS:
                labels.append(HumanLabel(run=feedback.run, feedback=feedback, kind=JudgeLabel.Kind.VERDICT,
                                         criterion=case.rubric.strip(), eval_case=case,
                                         human_pass=feedback.verdict == Feedback.Verdict.PASS))
        for run_pk in own - {feedback.run_id for feedback in by_question.get(key, [])}:
            if (feedback := reviewed.get(run_pk)) is not None:  # a source feedback on another question
                labels.append(HumanLabel(run=feedback.run, feedback=feedback, kind=JudgeLabel.Kind.VERDICT,
                                         criterion=case.rubric.strip(), eval_case=case,
                                         human_pass=feedback.verdict == Feedback.Verdict.PASS))
    return labels


def human_labels() -> list[HumanLabel]:
    """Every human label the reviewed runs give, once per (run, kind, criterion)."""
    reviewed = reviewed_feedback()
    cases = list(suite_cases().select_related("source_run").prefetch_related("source_feedback"))
    labels: dict[tuple[int, str, str], HumanLabel] = {}
    for label in verdict_labels(reviewed, cases):
        labels.setdefault(label.key, label)
    for feedback in reviewed.values():
        for label in labels_from_feedback(feedback):
            labels.setdefault(label.key, label)
    return list(labels.values())


# --- agreement ---------------------------------------------------------------------------------------------


@dataclass
class Agreement:
    """The 2x2 table of human vs judge labels, "fail" being the positive class."""

    tp: int = 0  # human fail, judge fail
    fn: int = 0  # human fail, judge pass
    tn: int = 0  # human pass, judge pass
    fp: int = 0  # human pass, judge fail
    errors: int = 0  # the judge did not answer: not a label
    judge: Judge | None = None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def labels(self) -> int:
        return self.tp + self.fn + self.tn + self.fp

    @property
    def agreed(self) -> int:
        return self.tp + self.tn

    @property
    def tpr(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def tnr(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    @property
    def observed(self) -> float | None:
        return self.agreed / self.labels if self.labels else None

    @property
    def kappa(self) -> float | None:
        n = self.labels
        if not n:
            return None
        observed = (self.tp + self.tn) / n
        expected = ((self.tp + self.fp) / n) * ((self.tp + self.fn) / n) + ((self.tn + self.fn) / n) * ((self.tn + self.fp) / n)
        if expected >= 1.0:
            return None  # both sides used one class only: agreement by chance cannot be told apart
        return (observed - expected) / (1.0 - expected)

    @property
    def min_labels(self) -> int:
        return settings.JUDGE_MIN_LABELS

    @property
    def min_kappa(self) -> float:
        return settings.JUDGE_MIN_KAPPA

    @property
    def calibrated(self) -> bool:
        kappa = self.kappa
        # rounded: a kappa of exactly the threshold must not fail on floating-point noise
        return self.labels >= settings.JUDGE_MIN_LABELS and kappa is not None and round(kappa, 9) >= settings.JUDGE_MIN_KAPPA

    def why_not_calibrated(self) -> str:
        """"" when calibrated, else the reason in words."""
        if self.calibrated:
            return ""
        reasons = []
        if self.labels < settings.JUDGE_MIN_LABELS:
            reasons.append(f"{self.labels} human label(s), fewer than the {settings.JUDGE_MIN_LABELS} required")
        kappa = self.kappa
        if kappa is None:
            reasons.append("Cohen's kappa is undefined" + (" (no labels)" if not self.labels else
                                                          " (every label in one class)"))
        elif round(kappa, 9) < settings.JUDGE_MIN_KAPPA:
            reasons.append(f"Cohen's kappa {kappa:.2f} is below {settings.JUDGE_MIN_KAPPA:.2f}")
        return "; ".join(reasons)

    def snapshot(self) -> dict[str, Any]:
        """What a gate run records about the judge it ran under."""
        return {
            "judge_model": self.judge.model if self.judge else "",
            "endpoint": self.judge.endpoint if self.judge else "",
            "rubric_version": self.judge.rubric_version if self.judge else "",
            "labels": self.labels, "tp": self.tp, "fn": self.fn, "tn": self.tn, "fp": self.fp, "errors": self.errors,
            "kappa": _round(self.kappa), "tpr": _round(self.tpr), "tnr": _round(self.tnr),
            "min_labels": settings.JUDGE_MIN_LABELS, "min_kappa": settings.JUDGE_MIN_KAPPA,
            "calibrated": self.calibrated, "why_not": self.why_not_calibrated(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def table(pairs: Iterable[tuple[bool, bool | None]]) -> Agreement:
    """An Agreement from (human_pass, judge_pass) pairs; judge_pass None counts as an error."""
    result = Agreement()
    for human_pass, judge_pass in pairs:
        _add(result, human_pass, judge_pass)
    return result


def _add(result: Agreement, human_pass: bool, judge_pass: bool | None, count: int = 1) -> None:
    if judge_pass is None:
        result.errors += count
    elif not human_pass:
        if judge_pass:
            result.fn += count
        else:
            result.tp += count
    elif judge_pass:
        result.tn += count
    else:
        result.fp += count


def agreement(judge: Judge | None = None) -> Agreement:
    """The agreement of `judge` (default: the current one) over all its stored labels, by kind too."""
    judge = judge or current_judge()
    result = Agreement(judge=judge)
    rows = judge.labels().order_by().values("kind", "human_pass", "judge_pass").annotate(n=Count("id"))
    for row in rows:
        _add(result, row["human_pass"], row["judge_pass"], row["n"])
        kind = result.by_kind.setdefault(row["kind"], {"labels": 0, "agreed": 0, "errors": 0})
        if row["judge_pass"] is None:
            kind["errors"] += row["n"]
        else:
            kind["labels"] += row["n"]
            kind["agreed"] += row["n"] if row["judge_pass"] == row["human_pass"] else 0
    return result


def all_agreements() -> list[Agreement]:
    """One Agreement per judge that has labels, the current judge first."""
    current = current_judge()
    judges = {Judge(model=model, endpoint=url, rubric_version=version) for model, url, version in
              JudgeLabel.objects.order_by().values_list("judge_model", "endpoint", "rubric_version").distinct()}
    ordered = [current] + sorted(judges - {current}, key=lambda j: (j.model, j.endpoint, j.rubric_version))
    return [agreement(judge) for judge in ordered]


# --- staleness: a case's rubric edited since the judge was calibrated on it --------------------------------


def case_calibration(cases: Iterable[EvalCase], judge: Judge | None = None) -> dict[int, str]:
    """case pk -> "current" (the judge has labels on its rubric as it is now), "stale" (labels only on an
    earlier wording: the rubric was edited since), "none" (never graded) or "rules" (no rubric)."""
    judge = judge or current_judge()
    cases = list(cases)
    hashes: dict[int, set[str]] = {}
    for case_pk, text_hash in judge.labels().filter(eval_case__in=[case.pk for case in cases]).order_by().values_list(
            "eval_case_id", "criterion_hash").distinct():
        hashes.setdefault(case_pk, set()).add(text_hash)
    states = {}
    for case in cases:
        if not uses_rubric(case):
            states[case.pk] = "rules"
        elif criterion_hash(case.rubric) in hashes.get(case.pk, set()):
            states[case.pk] = "current"
        else:
            states[case.pk] = "stale" if hashes.get(case.pk) else "none"
    return states


# --- the gate --------------------------------------------------------------------------------------------


def gate_snapshot() -> dict[str, Any]:
    """The calibration a gate run records when it starts (the current judge)."""
    return agreement().snapshot()


def gate_needs_reason(gate_run: GateRun) -> str | None:
    """Why promoting on `gate_run` needs a recorded reason, or None when its judge verdicts can be trusted.

    A reason is needed when at least one of its rows was decided by the rubric judge
    (GateRow.judge_decided: an llm-rubric assertion, and no deterministic assertion failed) and the
    judge it ran under was not calibrated (the snapshot in `gate_run.judge_calibration`, recorded when
    the gate ran; a gate run without a snapshot ran before calibration was recorded and counts as
    uncalibrated). A gate whose rows were all decided by deterministic assertions needs no reason.
    Only the calibration is judged here; regressions, flaky and unverified cases are the promotion
    check's own business.
    """
    decided = [row for row in gate_run.rows.all() if row.judge_decided]
    if not decided:
        return None
    snapshot = gate_run.judge_calibration or {}
    if snapshot.get("calibrated"):
        return None
    model = snapshot.get("judge_model") or gate_run.judge_model or "the judge"
    why = snapshot.get("why_not") or "no calibration was recorded for this gate run"
    return (f"The rubric judge ({model}) was not calibrated against the experts' verdicts when this gate ran "
            f"({why}), and it decided {len(decided)} of {gate_run.rows.count()} case(s).")


# --- requesting and running a calibration -------------------------------------------------------------


def enqueue(calibration: JudgeCalibration) -> None:
    from .tasks import calibrate_judge_task

    calibrate_judge_task.delay_on_commit(calibration.pk)


def latest_calibration(judge: Judge | None = None) -> JudgeCalibration | None:
    judge = judge or current_judge()
    return (JudgeCalibration.objects.filter(judge_model=judge.model, endpoint=judge.endpoint,
                                            rubric_version=judge.rubric_version).order_by("-created_at", "-pk").first())


def queued_calibration(judge: Judge) -> JudgeCalibration | None:
    return JudgeCalibration.objects.filter(status=JudgeCalibration.Status.QUEUED, judge_model=judge.model,
                                           endpoint=judge.endpoint, rubric_version=judge.rubric_version).first()


def request_calibration(*, user) -> JudgeCalibration:
    """Queue a refresh of the current judge's calibration; the queued one if there is one. A refresh that
    is already running may have read the labels before this request's approval, so a new one queues
    behind it (at most one queued per judge: a database constraint). `user` None: started by the app."""
    if user is not None:
        require_role(user, APPROVER, ENGINEER)
    judge = current_judge()
    with transaction.atomic():
        active = queued_calibration(judge)
        if active is not None:
            return active
        try:
            with transaction.atomic():  # one active refresh per judge: the database decides a race
                calibration = JudgeCalibration.objects.create(
                    judge_model=judge.model, endpoint=judge.endpoint, rubric_version=judge.rubric_version,
                    requested_by=user, status=JudgeCalibration.Status.QUEUED, heartbeat_at=timezone.now(),
                )
        except IntegrityError:
            active = queued_calibration(judge)
            if active is None:
                raise
            return active
        AuditEvent.record(actor=user, action="calibration.request", obj=calibration,
                          summary=f"Judge calibration {calibration.pk} requested for {judge.model} at {judge.endpoint}",
                          after={"calibration": calibration.pk, "judge_model": judge.model, "endpoint": judge.endpoint,
                                 "rubric_version": judge.rubric_version})
        enqueue(calibration)
    return calibration


def calibrate_when_approved(*, user) -> None:
    """Called when feedback is approved: refresh the calibration once the transaction commits
    (AUTO_CALIBRATE). Never breaks the approval."""
    transaction.on_commit(partial(_request_quietly, user))


def _request_quietly(user) -> JudgeCalibration | None:
    if not settings.AUTO_CALIBRATE:
        return None
    try:
        return request_calibration(user=None)
    except Exception:  # noqa: BLE001 - the approval stands even if calibration cannot start
        log.exception("could not request a judge calibration after a feedback approval (by %s)", user)
        return None


def _tests(labels: list[HumanLabel], *, offset: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from .promptfoo import provider_entry

    tests, answers = [], {}
    for index, label in enumerate(labels):
        run = label.run
        key = f"run-{run.pk}"
        answers[key] = {"answer": run.final_answer or "", "question": run.question.text, "trace_id": run.trace_id}
        tests.append({
            "description": f"{label.kind} on run {run.pk}",
            "vars": {"answer_key": key, "question": run.question.text, "trace_id": run.trace_id},
            "metadata": {"test_index": offset + index, "answer_key": key, "run_id": run.pk, "kind": label.kind},
            "assert": [rubric_assertion(label.criterion)],
        })
    config = {"description": f"Loopsite judge calibration: {len(tests)} criteria on reviewed answers",
              "prompts": ["{{question}}"], "providers": [provider_entry()], "tests": tests}
    return config, answers


def run_calibration(*, calibration: JudgeCalibration) -> JudgeCalibration:
    """Grade every human-labelled criterion with the judge (in batches, progress after each) and replace
    the judge's labels. Every outcome is stored on the row."""
    from .promptfoo import PromptfooError, run_config

    attempt = calibration.attempts
    judge = Judge(model=calibration.judge_model, endpoint=calibration.endpoint, rubric_version=calibration.rubric_version)
    if judge != current_judge():
        calibration.fail("The judge settings changed after this calibration was requested; refresh it again.",
                         attempt=attempt)
        return calibration
    try:
        labels = human_labels()
        calibration.progress(done=0, total=len(labels), attempt=attempt)
        graded: list[JudgeLabel] = []
        with calibration.scratch_dir(attempt) as scratch:
            for start in range(0, len(labels), BATCH_SIZE):
                batch = labels[start:start + BATCH_SIZE]
                config, answers = _tests(batch, offset=start)
                result = run_config(config=config, answers=answers, beat=lambda: calibration.beat(attempt),
                                    what="the judge calibration", prefix=f"loopsite-calibration-{calibration.pk}-",
                                    temp_root=scratch)
                if result.lost:
                    log.warning("judge calibration %s is no longer running here; stopped", calibration.pk)
                    return calibration
                if result.error:
                    calibration.fail(result.error, attempt=attempt)
                    return calibration
                by_index = {row["test_index"]: row for row in result.rows}
                for index, label in enumerate(batch, start=start):
                    graded.append(_judge_label(label, by_index.get(index), judge=judge, calibration=calibration))
                if not calibration.progress(done=start + len(batch), attempt=attempt):
                    return calibration
    except PromptfooError as exc:
        calibration.fail(str(exc), attempt=attempt)
        return calibration
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, re-runnable failure
        log.exception("judge calibration %s failed", calibration.pk)
        calibration.fail(f"Unexpected error ({type(exc).__name__}): {exc}", attempt=attempt)
        return calibration

    def replace_labels() -> None:
        judge.labels().delete()
        JudgeLabel.objects.bulk_create(graded)

    summary = table((label.human_pass, label.judge_pass) for label in graded)
    summary.judge = judge
    calibration.finish(attempt, store=replace_labels, done=len(graded), summary=summary.snapshot())
    return calibration


def _judge_label(label: HumanLabel, row: dict[str, Any] | None, *, judge: Judge,
                 calibration: JudgeCalibration) -> JudgeLabel:
    error = "promptfoo returned no result for this criterion." if row is None else row["error"]
    return JudgeLabel(
        calibration=calibration, run=label.run, feedback=label.feedback, eval_case=label.eval_case, kind=label.kind,
        criterion=label.criterion, criterion_hash=label.criterion_hash, human_pass=label.human_pass,
        judge_pass=None if error else bool(row["passed"]), score=None if row is None else row["score"],
        reason="" if row is None else row["reason"][:4000], error=error[:4000],
        judge_model=judge.model, endpoint=judge.endpoint, rubric_version=judge.rubric_version,
    )


# --- what the pages show ------------------------------------------------------------------------------------


def page_context(*, cases: Iterable[EvalCase] | None = None) -> dict[str, Any]:
    """Everything templates/reviews/_judge_calibration.html shows."""
    judge = current_judge()
    cases = list(suite_cases() if cases is None else cases)
    states = case_calibration(cases, judge)
    stale = [{"case": case, "state": states[case.pk]} for case in cases if states.get(case.pk) in ("stale", "none")]
    return {
        "judge": judge,
        "current": agreement(judge),
        "others": all_agreements()[1:],
        "calibration_job": latest_calibration(judge),
        "stale_cases": stale,
        "case_states": states,
        "min_labels": settings.JUDGE_MIN_LABELS,
        "min_kappa": settings.JUDGE_MIN_KAPPA,
    }
