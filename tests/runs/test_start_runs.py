"""The start_runs command (the worker is not involved: enqueued tasks are captured)."""

import io
from unittest import mock

import pytest
from django.core.management import CommandError, call_command

from runs.models import Batch, Run


def start(*args: str) -> str:
    out = io.StringIO()
    call_command("start_runs", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def enqueued():
    with mock.patch("runs.tasks.execute_run.delay") as delay:
        yield delay


def test_it_starts_one_run_per_default_question(sample, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        output = start("--harness", "v001")
    batch = Batch.objects.get()
    runs = list(batch.runs.order_by("pk"))
    assert [run.question.bank_index for run in runs] == [0, 1, 2, 4, 6]
    assert [run.label for run in runs] == ["trace-01", "trace-02", "trace-03", "trace-04", "trace-05"]
    assert {run.status for run in runs} == {Run.Status.QUEUED}
    assert (batch.harness.version, batch.dataroom.name) == ("v001", "FictionalCorp XYZ")
    assert sorted(call.args[0] for call in enqueued.call_args_list) == [run.pk for run in runs]
    assert f"Batch {batch.pk}: 5 run(s) of v001 on 'FictionalCorp XYZ'." in output


def test_it_takes_question_indices_and_a_dataroom(sample, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        start("--harness", "v001", "--dataroom", "FictionalCorp XYZ", "--questions", "3,8")
    assert list(Run.objects.order_by("pk").values_list("question__bank_index", flat=True)) == [3, 8]
    assert enqueued.call_count == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--harness", "v999"], "Unknown harness 'v999'. Known versions: v001."),
    (["--harness", "v001", "--questions", "1,42"], "Unknown question index(es) [42]. Known indices: [0, 1, 2"),
    (["--harness", "v001", "--questions", "one"], "--questions must be comma-separated numbers"),
    (["--harness", "v001", "--dataroom", "Nope"], "Unknown dataroom 'Nope'. Known datarooms: 'FictionalCorp XYZ'."),
])
def test_it_explains_bad_arguments(sample, enqueued, args, message):
    with pytest.raises(CommandError) as error:
        start(*args)
    assert message in str(error.value)
    assert not Run.objects.exists()
    enqueued.assert_not_called()


def worker_finishes(statuses):
    """Patch the wait loop's sleep: each poll, the next queued run ends with the next status."""
    statuses = iter(statuses)
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        assert len(polls) < 20, "the wait loop did not stop"
        run = Run.objects.filter(status=Run.Status.QUEUED).order_by("pk").first()
        if run is not None:
            Run.objects.filter(pk=run.pk).update(status=next(statuses), last_error="APIConnectionError: boom")

    return mock.patch("runs.management.commands.start_runs.time.sleep", side_effect=sleep)


def test_wait_reports_progress_until_all_finish(sample, enqueued):
    with worker_finishes([Run.Status.SUCCEEDED, Run.Status.SUCCEEDED]):
        output = start("--harness", "v001", "--questions", "0,1", "--wait")
    assert output.count(": queued") == 2
    assert output.count(": succeeded (") == 2
    assert "Done: 2 succeeded, 0 failed." in output


def test_wait_exits_non_zero_when_a_run_failed(sample, enqueued):
    out = io.StringIO()
    with worker_finishes([Run.Status.SUCCEEDED, Run.Status.FAILED]), pytest.raises(CommandError) as error:
        call_command("start_runs", "--harness", "v001", "--questions", "0,1", "--wait", stdout=out)
    failed = Run.objects.get(status=Run.Status.FAILED)
    assert str(error.value) == f"1 run(s) failed: {failed.pk}"
    assert "failed: APIConnectionError: boom" in out.getvalue()
    assert "Done: 1 succeeded, 1 failed." in out.getvalue()
