"""Where a cycle really is, derived from its rows (not from the stored `Cycle.status`, which only the
review and generation steps move), and what the gate and HALO still wait for before they may run.

`with_stage(cycles)` annotates a queryset in one query, so the cycle list costs the same for any number
of cycles; `stage_of(cycle)` reads the annotations (or computes them for a lone cycle).
"""

from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from loopsite.work import WorkStatus

from .models import Cycle, EvalCase, Feedback, GateRun, GenerationJob, Optimization


@dataclass(frozen=True)
class Stage:
    key: str  # also the badge's CSS class: badge-<key>
    label: str


def with_stage(cycles: QuerySet) -> QuerySet:
    cycle = OuterRef("pk")
    gates = GateRun.objects.filter(cycle=cycle, kind=GateRun.Kind.BASELINE)
    halo = Optimization.objects.filter(cycle=cycle)
    return cycles.annotate(
        st_generating=Exists(GenerationJob.objects.filter(cycle=cycle, status__in=GenerationJob.ACTIVE_STATUSES)),
        st_proposed=Count("eval_cases", filter=Q(eval_cases__status=EvalCase.Status.PROPOSED), distinct=True),
        st_approved_cases=Count("eval_cases", filter=Q(eval_cases__status=EvalCase.Status.APPROVED), distinct=True),
        st_gate_active=Exists(gates.filter(status__in=GateRun.ACTIVE_STATUSES)),
        st_gate_done=Exists(gates.filter(status=GateRun.Status.SUCCEEDED)),
        st_halo_active=Exists(halo.filter(status__in=Optimization.ACTIVE_STATUSES)),
        st_handoff=Exists(halo.filter(status=WorkStatus.SUCCEEDED)),
    )


def stage_of(cycle: Cycle, *, progress: dict[str, int] | None = None) -> Stage:
    """The step working now, or else the furthest step the cycle's pipeline has reached."""
    if not hasattr(cycle, "st_handoff"):
        cycle = with_stage(Cycle.objects.filter(pk=cycle.pk)).get()
    if cycle.status == Cycle.Status.CLOSED:
        return Stage("closed", "Closed")
    if cycle.st_halo_active:
        return Stage("halo-running", "HALO running")
    if cycle.st_gate_active:
        return Stage("gate-running", "Gate running")
    if cycle.st_generating:
        return Stage("generating", "Generating evals")
    if cycle.st_proposed:
        return Stage("proposed", f"Evals proposed: {cycle.st_proposed} to decide")
    if cycle.st_handoff:
        return Stage("handoff", "Handoff ready")
    if cycle.st_gate_done:
        return Stage("gated", "Gate done")
    if cycle.st_approved_cases:
        return Stage("evals-approved", "Evals approved")
    progress = progress or cycle.progress()
    if progress["total"] and progress["approved"] == progress["total"]:
        return Stage("reviewed", "All runs approved")
    return Stage("reviewing", "Reviewing")


def gate_waits_for(cycle: Cycle) -> str:
    """'' when the cycle's gate can run now, else what it waits for (said under the pipeline)."""
    if GateRun.objects.filter(cycle=cycle, status__in=GateRun.ACTIVE_STATUSES).exists():
        return "The gate is running."
    if not cycle.eval_cases.filter(status=EvalCase.Status.APPROVED).exists():
        return "The gate waits for approved evals from this cycle."
    return ""


def halo_waits_for(cycle: Cycle) -> str:
    """'' when HALO has its inputs (approved feedback, and no gate still judging), else what it waits for."""
    if Optimization.objects.filter(cycle=cycle, status__in=Optimization.ACTIVE_STATUSES).exists():
        return "HALO is running."
    if not Feedback.objects.filter(cycle=cycle, is_merged=True, status=Feedback.Status.APPROVED).exists():
        return "HALO waits for approved feedback: approve at least one run's feedback first."
    if GateRun.objects.filter(cycle=cycle, kind=GateRun.Kind.BASELINE, status__in=GateRun.ACTIVE_STATUSES).exists():
        return "HALO waits for the gate to finish."
    return ""
