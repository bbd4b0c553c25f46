"""The insights -> evals chain as Celery tasks. Arguments are ids; state lives on GenerationJob rows.

Each task re-reads its job, does nothing unless it can claim it (a conditional UPDATE
from queued to running), then calls the topic function. A second delivery of the same
message (acks_late after a lost worker) finds the job running or done and returns.
"""

from celery import shared_task

from .models import GenerationJob


def _claimed(job_id: int, kind: str) -> GenerationJob | None:
    job = GenerationJob.objects.select_related("cycle").filter(pk=job_id, kind=kind).first()
    if job is None or job.status != GenerationJob.Status.QUEUED or not job.claim():
        return None
    return job


@shared_task(name="reviews.generate_insights", acks_late=True)
def generate_insights_task(job_id: int) -> None:
    from .generation import run_job

    job = _claimed(job_id, GenerationJob.Kind.INSIGHTS)
    if job is not None:
        run_job(job=job)


@shared_task(name="reviews.generate_evals", acks_late=True)
def generate_evals_task(job_id: int) -> None:
    from .generation import run_job

    job = _claimed(job_id, GenerationJob.Kind.EVALS)
    if job is not None:
        run_job(job=job)


@shared_task(name="reviews.run_gate", acks_late=True)
def run_gate_task(gate_run_id: int) -> None:
    """Run the promptfoo gate for one gate run. A waiting (candidate) gate run is polled until its runs finish."""
    from .gate import poll_waiting, run_gate
    from .models import GateRun

    gate_run = GateRun.objects.select_related("cycle", "harness").filter(pk=gate_run_id).first()
    if gate_run is None:
        return
    if gate_run.status == GateRun.Status.WAITING and not poll_waiting(gate_run=gate_run):
        return  # its runs are still going: checked again in GATE_POLL_SECONDS
    if gate_run.claim():
        run_gate(gate_run=gate_run)


@shared_task(name="reviews.run_optimization", acks_late=True)
def run_optimization_task(optimization_id: int) -> None:
    """Run HALO for one queued optimization. Safe to deliver twice: only a claim proceeds."""
    from .models import Optimization
    from .optimization import run_optimization

    optimization = Optimization.objects.select_related("cycle__harness", "gate_run").filter(pk=optimization_id).first()
    if optimization is None or optimization.status != Optimization.Status.QUEUED or not optimization.claim():
        return
    run_optimization(optimization=optimization)
