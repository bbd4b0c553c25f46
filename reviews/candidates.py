"""Candidate evaluation: a new harness version runs every case's own question on the case's own dataroom,
then the whole approved suite is judged on its answers through the same gate and compared case by case
with its baseline.

    evaluate_candidate(candidate=v002, baseline=v001, user)
      -> runs.work.start_batch, once per dataroom behind the suite: one run of v002 per (question, dataroom)
         of the suite's cases (+ chosen extra questions, on the dataroom most cases came from)
      -> one cycle holding the runs of all those batches: the evaluation
      -> a baseline gate run of v001: its latest succeeded gate run covering the whole suite, else a new one
      -> a candidate GateRun (status waiting) on that cycle, naming the baseline gate run

The gate matches each case to the run of its question on its dataroom (reviews.gate.match_runs), so
every case is judged on the candidate's answer to its own (question, dataroom).

The candidate gate run starts as soon as its last run finishes: reviews.gate.release_when_runs_finish
receives loopsite.work.work_finished for every run and queues a waiting gate run whose cycle has no run
left queued or running. Its task also re-enqueues itself every GATE_POLL_SECONDS while runs are active,
and the beat's sweep queues a waiting gate run whose runs have finished: both only safety nets (a lost
message, a restarted worker). Nothing in the runner has to know about the gate.

`comparison(baseline_gate, candidate_gate)` is the `runs.promotion.Comparison` that
`Harness.promote(comparison=...)` checks: one row per case of the current suite, and the reasons
(an uncalibrated judge) that promotion on these gate runs needs a recorded reason.
`version_pass_rates()` is the versions chart: one point per version on its agent's current suite.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.roles import ENGINEER, require_role
from runs.models import Dataroom, Harness, Question, Run
from runs.promotion import ERROR, NOT_RUN, CaseResult, Comparison, PassRatePoint

from .calibration import gate_needs_reason
from .endpoint import ENDPOINT_VIA
from .gate import request_gate
from .models import Cycle, EvalCase, GateRow, GateRun
from .suite import suite_cases


class CandidateError(Exception):
    """The candidate cannot be evaluated as things stand; the message says why."""


def suite_targets(agent) -> list[tuple[Dataroom, list[Question]]]:
    """What the approved suite's cases were asked: (dataroom, questions) per dataroom of their source runs,
    the dataroom with most cases first, questions in suite order. [] while the suite is empty."""
    cases = list(suite_cases(agent=agent).select_related("source_run__dataroom", "source_run__question")
                 .filter(source_run__dataroom__isnull=False))
    counts = Counter(case.source_run.dataroom_id for case in cases)
    targets: dict[int, tuple[Dataroom, list[Question]]] = {}
    for case in cases:
        dataroom, questions = targets.setdefault(case.source_run.dataroom_id, (case.source_run.dataroom, []))
        if case.source_run.question not in questions:
            questions.append(case.source_run.question)
    order = {dataroom_id: index for index, dataroom_id in enumerate(targets)}
    return sorted(targets.values(), key=lambda target: (-counts[target[0].pk], order[target[0].pk]))


def covered_cases(gate_run: GateRun) -> set[int]:
    return set(gate_run.rows.filter(error="").values_list("eval_case_id", flat=True))


def baseline_gate_for(*, baseline: Harness, user) -> GateRun:
    """The baseline's latest succeeded gate run that judged every case of the current suite; else a new
    gate run of the baseline's latest answers (or the one already queued)."""
    wanted = set(suite_cases(agent=baseline.agent).values_list("pk", flat=True))
    recent = GateRun.objects.filter(harness=baseline, status=GateRun.Status.SUCCEEDED).order_by("-finished_at", "-pk")
    for gate_run in recent[:10]:
        if wanted <= covered_cases(gate_run):
            return gate_run
    return request_gate(harness=baseline, user=user)


def evaluate_candidate(*, candidate: Harness, baseline: Harness, user, extra_questions=()) -> GateRun:
    """Start the candidate's runs of every suite case's (question, dataroom) (plus `extra_questions` on the
    dataroom most cases came from), grouped in one cycle, and its gate run on that cycle."""
    require_role(user, ENGINEER)
    if candidate.pk == baseline.pk:
        raise CandidateError("A version cannot be compared with itself: choose another baseline.")
    if candidate.status == Harness.Status.RETIRED:
        raise CandidateError(f"{candidate.version} is retired: create a new version from it instead.")
    if candidate.agent is not None and candidate.agent.has_endpoint:
        return evaluate_through_endpoint(candidate=candidate, baseline=baseline, user=user)
    targets = suite_targets(candidate.agent)
    if not targets:
        raise CandidateError("The regression suite has no approved cases yet: approve eval cases first.")
    main_questions = targets[0][1]
    main_questions += [question for question in extra_questions if question not in main_questions]
    from runs.work import start_batch

    with transaction.atomic():
        baseline_gate = baseline_gate_for(baseline=baseline, user=user)
        batches, label = [], 1
        for dataroom, questions in targets:
            batches.append(start_batch(harness=candidate, dataroom=dataroom, questions=questions, user=user,
                                       cycle=False, first_index=label))
            label += len(questions)
        runs = list(Run.objects.filter(batch__in=batches).order_by("pk"))
        cycle = Cycle.objects.create_from_runs(
            runs=runs, user=user,
            name=f"{candidate.version} · {timezone.localdate():%Y-%m-%d} · candidate vs {baseline.version}",
        )
        gate_run = request_gate(cycle=cycle, user=user, kind=GateRun.Kind.CANDIDATE, baseline=baseline_gate)
        AuditEvent.record(
            actor=user, action="harness.evaluate", obj=candidate,
            summary=f"Evaluating {candidate.version} against {baseline.version}: {len(runs)} run(s) on "
                    f"{len(targets)} dataroom(s), gate run {gate_run.pk} vs {baseline_gate.pk}",
            after={"candidate": candidate.version, "baseline": baseline.version,
                   "batches": [batch.pk for batch in batches], "cycle": cycle.pk, "gate_run": gate_run.pk,
                   "baseline_gate_run": baseline_gate.pk,
                   "runs": {dataroom.name: [question.pk for question in questions] for dataroom, questions in targets}},
        )
    return gate_run


def evaluate_through_endpoint(*, candidate: Harness, baseline: Harness, user) -> GateRun:
    """An external agent's version with an HTTP endpoint: a candidate gate run (on a cycle without runs) in which
    promptfoo calls the endpoint with every suite case's input (reviews.endpoint), against the baseline's gate run."""
    agent = candidate.agent
    if baseline.agent_id != agent.pk:
        raise CandidateError(f"Compare {candidate.version} with another version of {agent.name}.")
    cases = suite_cases(agent=agent).count()
    if not cases:
        raise CandidateError(f"The regression suite has no approved case of {agent.name} yet: approve eval cases first.")
    with transaction.atomic():
        baseline_gate = baseline_gate_for(baseline=baseline, user=user)
        # The evaluation's cycle holds no runs: the answers come from the endpoint, straight into the gate's rows.
        cycle = Cycle.objects.create(
            harness=candidate, created_by=user, status=Cycle.Status.CLOSED,
            name=f"{candidate.version} · {timezone.localdate():%Y-%m-%d} · candidate vs {baseline.version} "
                 f"through its endpoint")
        gate_run = request_gate(cycle=cycle, user=user, kind=GateRun.Kind.CANDIDATE, baseline=baseline_gate)
        GateRun.objects.filter(pk=gate_run.pk).update(config={"via": ENDPOINT_VIA})
        AuditEvent.record(
            actor=user, action="harness.evaluate", obj=candidate,
            summary=f"Evaluating {candidate.version} against {baseline.version} through {agent.endpoint_url}: "
                    f"{cases} case(s), gate run {gate_run.pk} vs {baseline_gate.pk}",
            after={"candidate": candidate.version, "baseline": baseline.version, "endpoint": agent.endpoint_url,
                   "cases": cases, "cycle": cycle.pk, "gate_run": gate_run.pk, "baseline_gate_run": baseline_gate.pk},
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


def _not_run_reason(gate_run: GateRun, case: EvalCase) -> str:
    for item in (gate_run.config or {}).get("skipped", []):
        if item.get("case_id") == case.pk:
            return item.get("reason") or "Skipped."
    return f"Not in the approved suite when gate run {gate_run.pk} ran."


def compared_cases(baseline_gate: GateRun, candidate_gate: GateRun) -> list[ComparedCase]:
    """Every case of the current approved suite, in suite order, with each side's row (None: not run there).
    A case neither gate run judged is still here: not verified."""
    def rows_of(gate_run: GateRun) -> dict[int, GateRow]:
        return {row.eval_case_id: row for row in gate_run.rows.select_related("run__dataroom")}

    def side(gate_run: GateRun, row: GateRow | None, case: EvalCase) -> dict:
        if row is None:
            return {"pass": None, "score": None, "reason": _not_run_reason(gate_run, case), "url": "", "state": NOT_RUN}
        return {"pass": row.verdict, "score": row.score, "reason": row.error or row.reason,
                "url": row.run.get_absolute_url() if row.run else "", "state": ERROR if row.error else ""}

    base, cand = rows_of(baseline_gate), rows_of(candidate_gate)
    cases = list(suite_cases(agent=candidate_gate.harness.agent).select_related("source_run__dataroom"))
    eval_ids = Counter(case.eval_id for case in cases)
    compared = []
    for case in cases:
        b, c = base.get(case.pk), cand.get(case.pk)
        bs, cs = side(baseline_gate, b, case), side(candidate_gate, c, case)
        result = CaseResult(
            case_id=case.eval_id if eval_ids[case.eval_id] == 1 else f"{case.eval_id}#{case.pk}",
            title=case.title,
            baseline_pass=bs["pass"], candidate_pass=cs["pass"],
            baseline_score=bs["score"], candidate_score=cs["score"],
            baseline_reason=bs["reason"], candidate_reason=cs["reason"],
            baseline_url=bs["url"], candidate_url=cs["url"],
            baseline_state=bs["state"], candidate_state=cs["state"],
        )
        compared.append(ComparedCase(result=result, case=case, baseline_row=b, candidate_row=c))
    return compared


def gate_reasons(*gate_runs: GateRun) -> list[str]:
    """Why promotion on these gate runs needs a recorded reason: a judge that was not calibrated when it
    decided some of their rows (reviews.calibration.gate_needs_reason), each reason once."""
    reasons: list[str] = []
    for gate_run in gate_runs:
        reason = gate_needs_reason(gate_run)
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons


def comparison(baseline_gate: GateRun, candidate_gate: GateRun, compared: list[ComparedCase] | None = None) -> Comparison:
    compared = compared if compared is not None else compared_cases(baseline_gate, candidate_gate)
    return Comparison(
        baseline=baseline_gate.harness, candidate=candidate_gate.harness, rows=tuple(item.result for item in compared),
        source=f"gate runs {baseline_gate.pk} ({baseline_gate.harness.version}) and "
               f"{candidate_gate.pk} ({candidate_gate.harness.version})",
        needs_reason=tuple(gate_reasons(candidate_gate, baseline_gate)),
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


# --- the versions chart ------------------------------------------------------------------------------------


def version_pass_rates(agent=None) -> list[PassRatePoint]:  # noqa: ANN001
    """One point per harness version, oldest version first: its pass rate on its agent's CURRENT suite, from
    the latest verdict per case among its succeeded gate runs (rows with an error have no verdict and are
    skipped), with the number of cases it was measured on. [] until a version has a verdict. `agent`: only
    that agent's versions."""
    suites: dict[int, set[int]] = defaultdict(set)  # agent id -> its suite's case ids
    for case_id, agent_id in suite_cases(agent=agent).values_list("pk", "source_run__agent_id"):
        suites[agent_id].add(case_id)
    if not suites:
        return []
    latest: dict[int, dict[int, tuple[bool, object]]] = defaultdict(dict)
    rows = (GateRow.objects.filter(eval_case_id__in=set().union(*suites.values()),
                                   gate_run__status=GateRun.Status.SUCCEEDED, error="")
            .order_by("gate_run__finished_at", "gate_run_id")
            .values_list("gate_run__harness_id", "eval_case_id", "passed", "gate_run__finished_at"))
    for harness_id, case_id, passed, finished_at in rows:
        latest[harness_id][case_id] = (passed, finished_at)
    points = []
    harnesses = Harness.objects.filter(pk__in=latest).order_by("created_at", "pk").only("id", "version", "created_at",
                                                                                        "agent_id")
    for harness in harnesses:
        suite = suites.get(harness.agent_id, set())
        verdicts = [verdict for case_id, verdict in latest[harness.pk].items() if case_id in suite]
        if not verdicts:
            continue
        passed = sum(1 for verdict, _ in verdicts if verdict)
        points.append(PassRatePoint(
            version=harness.version, pass_rate=passed / len(verdicts), passed=passed, total=len(verdicts),
            at=max((at for _, at in verdicts if at is not None), default=None),
            label=f"{len(verdicts)} of {len(suite)} suite case{'s' if len(suite) != 1 else ''}", suite_size=len(suite),
        ))
    return points
