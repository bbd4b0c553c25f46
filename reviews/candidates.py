"""Candidate evaluation: a new harness version runs the suite's questions, then the whole approved suite
is judged on its answers through the same gate and compared case by case with its baseline.

    evaluate_candidate(candidate=v002, baseline=v001, user)
      -> runs.work.start_batch: one run of v002 per question behind the suite (+ chosen extras), in a new cycle
      -> a baseline gate run of v001: its latest succeeded gate run covering the whole suite, else a new one
      -> a candidate GateRun (status waiting) on that cycle, naming the baseline gate run

The candidate gate run waits for its runs by polling: its task re-enqueues itself every
GATE_POLL_SECONDS while any run of its cycle is queued or running, then runs the gate. The
beat's sweep is the safety net (a lost poll message, a restarted worker): it queues a waiting
gate run whose runs have finished. Nothing in the runner has to know about the gate.

`comparison(baseline_gate, candidate_gate)` is the `runs.promotion.Comparison` that
`Harness.promote(comparison=...)` checks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from django.db import transaction

from loopsite.models import AuditEvent
from loopsite.roles import ENGINEER, require_role
from runs.models import Harness, Question
from runs.promotion import CaseResult, Comparison

from .gate import request_gate
from .models import EvalCase, GateRow, GateRun
from .suite import suite_cases


class CandidateError(Exception):
    """The candidate cannot be evaluated as things stand; the message says why."""


def suite_questions():
    """(dataroom, questions) behind the approved suite: its cases' source runs' questions, in suite order,
    on the dataroom most of them were asked on. (None, []) while the suite is empty."""
    cases = list(suite_cases().select_related("source_run__dataroom"))
    if not cases:
        return None, []
    dataroom = Counter(case.source_run.dataroom for case in cases).most_common(1)[0][0]
    questions: list[Question] = []
    for case in cases:
        question = case.source_run.question
        if case.source_run.dataroom_id == dataroom.pk and question not in questions:
            questions.append(question)
    return dataroom, questions


def covered_cases(gate_run: GateRun) -> set[int]:
    return set(gate_run.rows.filter(error="").values_list("eval_case_id", flat=True))


def baseline_gate_for(*, baseline: Harness, user) -> GateRun:
    """The baseline's latest succeeded gate run that judged every case of the current suite; else a new
    gate run of the baseline's latest answers (or the one already queued)."""
    wanted = set(suite_cases().values_list("pk", flat=True))
    recent = GateRun.objects.filter(harness=baseline, status=GateRun.Status.SUCCEEDED).order_by("-finished_at", "-pk")
    for gate_run in recent[:10]:
        if wanted <= covered_cases(gate_run):
            return gate_run
    return request_gate(harness=baseline, user=user)


def evaluate_candidate(*, candidate: Harness, baseline: Harness, user, extra_questions=()) -> GateRun:
    """Start the candidate's runs on the suite's questions (plus `extra_questions`) and its gate run."""
    require_role(user, ENGINEER)
    if candidate.pk == baseline.pk:
        raise CandidateError("A version cannot be compared with itself: choose another baseline.")
    if candidate.status == Harness.Status.RETIRED:
        raise CandidateError(f"{candidate.version} is retired: create a new version from it instead.")
    dataroom, questions = suite_questions()
    if not questions:
        raise CandidateError("The regression suite has no approved cases yet: approve eval cases first.")
    questions += [question for question in extra_questions if question not in questions]
    from runs.work import start_batch

    with transaction.atomic():
        baseline_gate = baseline_gate_for(baseline=baseline, user=user)
        batch = start_batch(harness=candidate, dataroom=dataroom, questions=questions, user=user)
        cycle = batch.cycles.get()
        gate_run = request_gate(cycle=cycle, user=user, kind=GateRun.Kind.CANDIDATE, baseline=baseline_gate)
        AuditEvent.record(
            actor=user, action="harness.evaluate", obj=candidate,
            summary=f"Evaluating {candidate.version} against {baseline.version}: {len(questions)} run(s), "
                    f"gate run {gate_run.pk} vs {baseline_gate.pk}",
            after={"candidate": candidate.version, "baseline": baseline.version, "batch": batch.pk,
                   "cycle": cycle.pk, "gate_run": gate_run.pk, "baseline_gate_run": baseline_gate.pk,
                   "questions": [question.pk for question in questions]},
        )
    return gate_run


# --- comparison --------------------------------------------------------------------------------------------


@dataclass
class ComparedCase:
    """One case on both sides, with what the comparison page shows beyond the CaseResult."""

    result: CaseResult
    case: EvalCase
    baseline_row: GateRow | None
    candidate_row: GateRow | None


def compared_cases(baseline_gate: GateRun, candidate_gate: GateRun) -> list[ComparedCase]:
    """Every case either side judged (plus the candidate's skipped cases), in suite order."""
    def rows_of(gate_run: GateRun) -> dict[int, GateRow]:
        return {row.eval_case_id: row for row in gate_run.rows.select_related("run", "eval_case")}

    base, cand = rows_of(baseline_gate), rows_of(candidate_gate)
    skipped = [item["case_id"] for item in (candidate_gate.config or {}).get("skipped", [])]
    cases = EvalCase.objects.in_bulk([*base, *cand, *skipped])
    order = sorted(cases.values(), key=lambda case: (
        (cand.get(case.pk) or base.get(case.pk) or GateRow(position=10**6)).position, case.pk))
    eval_ids = Counter(case.eval_id for case in order)
    compared = []
    for case in order:
        b, c = base.get(case.pk), cand.get(case.pk)
        result = CaseResult(
            case_id=case.eval_id if eval_ids[case.eval_id] == 1 else f"{case.eval_id}#{case.pk}",
            title=case.title,
            baseline_pass=b.verdict if b else None, candidate_pass=c.verdict if c else None,
            baseline_score=b.score if b else None, candidate_score=c.score if c else None,
            baseline_reason=(b.error or b.reason) if b else "", candidate_reason=(c.error or c.reason) if c else "",
            baseline_url=b.run.get_absolute_url() if b and b.run else "",
            candidate_url=c.run.get_absolute_url() if c and c.run else "",
        )
        compared.append(ComparedCase(result=result, case=case, baseline_row=b, candidate_row=c))
    return compared


def comparison(baseline_gate: GateRun, candidate_gate: GateRun, compared: list[ComparedCase] | None = None) -> Comparison:
    compared = compared if compared is not None else compared_cases(baseline_gate, candidate_gate)
    return Comparison(
        baseline=baseline_gate.harness, candidate=candidate_gate.harness, rows=tuple(item.result for item in compared),
        source=f"gate runs {baseline_gate.pk} ({baseline_gate.harness.version}) and "
               f"{candidate_gate.pk} ({candidate_gate.harness.version})",
    )


def latest_candidate_gate(candidate: Harness) -> GateRun | None:
    """The candidate's latest succeeded candidate gate run whose baseline gate run also succeeded."""
    return (
        GateRun.objects.filter(harness=candidate, kind=GateRun.Kind.CANDIDATE, status=GateRun.Status.SUCCEEDED,
                               baseline__status=GateRun.Status.SUCCEEDED)
        .select_related("harness", "baseline__harness").order_by("-finished_at", "-pk").first()
    )


def latest_comparison(candidate: Harness) -> Comparison | None:
    """What promotion checks for `candidate` (runs.promotion.comparison_for): None until it has been gated."""
    gate_run = latest_candidate_gate(candidate)
    return comparison(gate_run.baseline, gate_run) if gate_run is not None else None
