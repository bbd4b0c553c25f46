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
    """Run the promptfoo gate for one gate run. A waiting (candidate) gate run starts when its last run finishes;
    until then this task also polls it every GATE_POLL_SECONDS, as a safety net."""
    from .gate import poll_waiting, run_gate
    from .models import GateRun

    gate_run = GateRun.objects.select_related("cycle", "harness").filter(pk=gate_run_id).first()
    if gate_run is None:
        return
    if gate_run.status == GateRun.Status.WAITING and not poll_waiting(gate_run=gate_run):
        return  # its runs are still going: queued when the last one finishes (gate.release_when_runs_finish)
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


@shared_task(name="reviews.calibrate_judge", acks_late=True)
def calibrate_judge_task(calibration_id: int) -> None:
    """Refresh the judge's calibration (reviews.calibration). Safe to deliver twice: only a claim proceeds.

    One refresh per judge at a time: a queued one waits while another of the same judge runs (it may have
    read the labels before the latest approval) and is sent again the moment that one ends. Every approval
    asks for a refresh, so several at once would each judge every label, all competing for the same cores
    and model slots as the back-tests the approver waits for. The sweep re-sends a queued row whose message
    was lost."""
    from .calibration import run_calibration
    from .models import JudgeCalibration

    calibration = JudgeCalibration.objects.filter(pk=calibration_id).first()
    if calibration is None or calibration.status != JudgeCalibration.Status.QUEUED:
        return
    if _same_judge(calibration).filter(status=JudgeCalibration.Status.RUNNING).exists():
        return  # sent again when the running one ends
    if calibration.claim() is None:
        return
    try:
        run_calibration(calibration=calibration)
    finally:
        for waiting in _same_judge(calibration).filter(status=JudgeCalibration.Status.QUEUED).values_list("pk", flat=True):
            calibrate_judge_task.delay(waiting)


def _same_judge(calibration):  # noqa: ANN001, ANN202
    from .models import JudgeCalibration

    return JudgeCalibration.objects.filter(judge_model=calibration.judge_model, endpoint=calibration.endpoint,
                                           rubric_version=calibration.rubric_version).exclude(pk=calibration.pk)


@shared_task(name="reviews.backtest", acks_late=True)
def backtest_task(backtest_run_id: int) -> None:
    """Back-test one eval case through promptfoo (a repair first asks the generator). Only a claim proceeds."""
    from .backtest import run_backtest
    from .models import BackTestRun

    backtest_run = BackTestRun.objects.select_related("case").filter(pk=backtest_run_id).first()
    if backtest_run is None or backtest_run.status != BackTestRun.Status.QUEUED or backtest_run.claim() is None:
        return
    run_backtest(backtest_run=backtest_run)
