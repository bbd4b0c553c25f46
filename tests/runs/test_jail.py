"""The agent's shell commands run in a bubblewrap jail (runs/jail.py).

The main test runs a real agent run on a REAL Celery worker whose own environment holds the
secrets (OPENAI_API_KEY, SECRET_KEY), against a stand-in model started with probe commands (server
configuration, not question text) that look around from inside the jail. The other tests drive the
jail directly through real subprocesses, and check the refusal message, the banner, the heartbeat
during validation and the limits on salvaged outputs.
"""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from loopsite.standin.server import serve_in_thread
from runs import jail, runner, work
from runs.models import REQUIRED_ARTIFACTS, Question, Run
from tests.fixtures_worker import wait_for

SECRET_API_KEY = "sk-secret-jailtest-5b1f0c2e9d7a4b6c"
SECRET_DJANGO_KEY = "django-secret-jailtest-0c9e2b7d41f6a3e8-" + "x" * 20
SAMPLE_QUESTION = "What do runway and burn tell us about near-term financing risk?"


def can_connect(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def jailed(command: str, workspace: Path) -> subprocess.CompletedProcess:
    argv = jail.wrap(jail.resolve("bwrap"), ["sh", "-c", command], workspace=workspace)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENAI_API_KEY": SECRET_API_KEY})


# -- the jail itself, through real subprocesses --------------------------------

def test_bwrap_starts_with_an_empty_environment_and_the_command_sees_only_its_own(tmp_path):
    done = jailed("cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo; ls -d /proc/[0-9]* | wc -l", tmp_path)
    assert done.returncode == 0, done.stderr
    assert SECRET_API_KEY not in done.stdout
    assert "PATH=/usr/bin:/bin" in done.stdout  # bwrap's own /proc/1/environ, readable and empty but PATH
    assert f"HOME={tmp_path}" in done.stdout  # the command's environment
    assert int(done.stdout.split()[-1]) <= 4  # bwrap, sh, cat/ls/wc: no host process is visible


def test_only_the_workspace_is_writable_and_the_project_is_absent(tmp_path):
    project = Path(django_settings.BASE_DIR)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (tmp_path / "sibling-secret.txt").write_text("the rest of the run's directory")
    done = jailed(f"touch inside.txt; touch /usr/x /etc/x /x /tmp/x; ls {project} /root /work; "
                  f"ls {tmp_path}; cat {tmp_path / 'sibling-secret.txt'}; "
                  "python -c 'import sys; print(sys.executable)'", workspace)
    assert (workspace / "inside.txt").exists()
    for path in ("/usr/x", "/etc/x", "/x", "/tmp/x"):
        assert f"cannot touch '{path}': Read-only file system" in done.stderr
    for path in (project, "/root", "/work"):
        assert f"ls: cannot access '{path}': No such file or directory" in done.stderr
    # Of the workspace's surroundings only the empty mount point path exists.
    assert done.stdout.splitlines()[0] == "workspace"
    assert f"cat: {tmp_path / 'sibling-secret.txt'}: No such file or directory" in done.stderr
    assert done.stdout.strip().endswith("/python")  # the system python3, as `python`


def test_a_command_has_no_capabilities_to_remount_the_system_read_write(tmp_path):
    target = Path(f"/usr/share/loopsite-jail-test-{os.getpid()}")
    done = jailed(f"grep CapEff /proc/self/status; mount -o remount,rw,bind /usr && touch {target}; "
                  "mount -o remount,rw / && echo ROOT-RW", tmp_path)
    escaped = target.exists()
    target.unlink(missing_ok=True)
    assert not escaped
    assert "CapEff:\t0000000000000000" in done.stdout and "ROOT-RW" not in done.stdout
    assert "mount: /usr: permission denied." in done.stderr


def test_a_missing_bwrap_is_explained():
    available = jail.availability(bwrap="/nonexistent/bwrap")
    assert not available.usable and not available.confined
    assert "bubblewrap was not found at '/nonexistent/bwrap'" in available.error
    assert "apt-get install bubblewrap" in available.error
    assert "LOOPSITE_UNCONFINED_SANDBOX=1" in available.error
    assert jail.availability(bwrap="/nonexistent/bwrap", unconfined=True) == jail.Availability(confined=False)
    assert jail.availability(bwrap="bwrap").confined


def test_a_bwrap_that_cannot_build_the_jail_is_explained(tmp_path):
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    broken.chmod(0o755)
    available = jail.availability(bwrap=str(broken))
    assert not available.usable
    assert f"{broken} cannot create the jail on this machine (bwrap: No permissions" in available.error


def test_a_run_refuses_to_start_without_bwrap(make_run, standin, settings):
    settings.LOOPSITE_BWRAP = "/nonexistent/bwrap"
    run = make_run(SAMPLE_QUESTION, claim=True)
    runner.execute_run(run=run)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.last_error.startswith("The agent's shell cannot be confined, so the run was not started: "
                                     "bubblewrap was not found at '/nonexistent/bwrap'.")
    assert "apt-get install bubblewrap" in run.last_error and "LOOPSITE_UNCONFINED_SANDBOX=1" in run.last_error
    assert run.spans.count() == 0 and run.artifacts.count() == 0 and run.model_calls == 0


def test_with_unconfined_sandbox_set_a_run_works_and_every_page_says_so(make_run, standin, settings, client,
                                                                      reviewer):
    client.force_login(reviewer)
    assert "unconfined-banner" not in client.get("/runs/").content.decode()

    settings.LOOPSITE_UNCONFINED_SANDBOX = True
    settings.LOOPSITE_BWRAP = "/nonexistent/bwrap"
    for url in ("/runs/", "/accounts/login/"):
        page = client.get(url, follow=True).content.decode()
        assert 'data-testid="unconfined-banner"' in page and "The agent's shell is unconfined" in page
    run = make_run(SAMPLE_QUESTION, claim=True)
    runner.execute_run(run=run)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.last_error


# -- a real run on a real worker with the secrets in its environment ------------

def tool_outputs(run: Run) -> dict[str, str]:
    """The output of every shell command of the run, by command, as stored in its spans."""
    outputs = {}
    for span in run.spans.filter(observation_kind="TOOL"):
        attributes = span.attributes
        try:
            command = json.loads(attributes.get("input.value") or "{}").get("cmd")
        except json.JSONDecodeError:
            continue
        if command:
            outputs[command] = str(attributes.get("output.value") or "")
    return outputs


@pytest.fixture
def probing_standin(settings, live_server):
    """A stand-in whose analyst first runs the probes below in every agent run (server configuration)."""
    db_name = str(connection.settings_dict["NAME"])
    project = Path(settings.BASE_DIR)
    app_port = int(live_server.url.rsplit(":", 1)[1])
    server, thread = serve_in_thread("127.0.0.1", 0)
    ports = {"app": app_port, "redis": 6379, "model": server.server_address[1]}
    probes = {
        "environ": "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo; echo PROCS=$(ls -d /proc/[0-9]* | wc -l)",
        "files": f"cat {db_name} {project / 'var' / 'db.sqlite3'}; ls {project} {project / 'var'} /root /work; "
                 "ls data/tools; grep runtime_scope data/manifest.json; echo FILES-DONE",
    }
    probes["network"] = "\n".join([
        "python3 - <<'PY'",
        "import socket",
        f"for name, port in {json.dumps(sorted(ports.items()))}:",
        "    s = socket.socket(); s.settimeout(3)",
        "    try:",
        "        s.connect(('127.0.0.1', port)); print(name, 'CONNECTED')",
        "    except OSError as exc:",
        "        print(name, 'failed:', exc)",
        "PY",
    ])
    server.probe_commands = tuple(probes.values())
    yield {"url": server.base_url, "probes": probes, "ports": ports, "db_name": db_name, "project": project}
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_from_inside_an_agent_command_no_secret_no_database_no_network(sample, probing_standin,
                                                                       celery_worker_factory, settings):
    # The secrets live in the real worker process's environment; the model endpoint is the stand-in.
    worker = celery_worker_factory(concurrency=1, env={
        "OPENAI_API_KEY": SECRET_API_KEY, "OPENAI_BASE_URL": probing_standin["url"], "SECRET_KEY": SECRET_DJANGO_KEY,
    })
    # Outside the jail all of it is there: the worker's environ holds the key, the ports answer.
    assert SECRET_API_KEY.encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
    assert all(can_connect(port) for port in probing_standin["ports"].values()), probing_standin["ports"]

    batch = work.start_batch(harness=sample["harness"], dataroom=sample["dataroom"],
                             questions=[Question.objects.get(bank_index=0)], user=None)
    (run,) = Run.objects.filter(batch=batch)
    run = wait_for(lambda: (r := Run.objects.get(pk=run.pk)) and not r.is_active and r, timeout=120,
                   message="the run to finish")
    assert (run.status, run.last_error) == (Run.Status.SUCCEEDED, ""), worker.log()[-3000:]
    assert run.used_standin is False  # the worker used its own key, as with a real provider

    outputs = tool_outputs(run)
    probes = probing_standin["probes"]
    assert set(probes.values()) <= set(outputs), list(outputs)

    environ = outputs[probes["environ"]]
    assert "PATH=/usr/bin:/bin" in environ and "PROCS=" in environ
    assert int(environ.split("PROCS=")[1].split()[0]) <= 5  # only the jail's own processes

    files = outputs[probes["files"]]
    assert f"cat: {probing_standin['db_name']}: No such file or directory" in files
    for path in (probing_standin["project"], probing_standin["project"] / "var", "/root", "/work"):
        assert f"ls: cannot access '{path}': No such file or directory" in files
    assert "check_evidence_coverage.py" in files and "validate_output_contract.py" in files
    assert '"runtime_scope": "sdk_agent_visible_dataroom"' in files and "FILES-DONE" in files

    network = outputs[probes["network"]]
    for name in probing_standin["ports"]:
        assert f"{name} failed:" in network, network
    assert "CONNECTED" not in network

    # The validators ran inside the jail (the agent's own calls) and passed; six artifacts were produced.
    assert "- Evidence coverage check: passed" in run.final_answer
    assert "- Output contract check: passed" in run.final_answer
    assert set(REQUIRED_ARTIFACTS) <= set(run.artifacts.values_list("name", flat=True))
    assert run.output_contract["passed"] is True and run.evidence_coverage["passed"] is True

    # Nothing the run stored holds a secret.
    stored = "\n".join([run.final_answer, *(json.dumps(d) for d in run.spans.values_list("data", flat=True)),
                        *run.artifacts.values_list("content", flat=True)])
    for secret in (SECRET_API_KEY, SECRET_DJANGO_KEY, "OPENAI_API_KEY", "SECRET_KEY="):
        assert secret not in stored


# -- the runner keeps the row alive and takes out only what it may -------------

@pytest.mark.django_db(transaction=True)
def test_the_run_keeps_its_heartbeat_while_slow_validators_run(make_run, standin, settings, tmp_path, monkeypatch):
    settings.WORK_STALE_SECONDS = 2  # beats every 0.5 s
    slow_tools = tmp_path / "tools"
    slow_tools.mkdir()
    for name in ("check_evidence_coverage.py", "validate_output_contract.py"):
        real = runner.TOOLS_DIR / name
        (slow_tools / name).write_text(
            f"import runpy, sys, time\ntime.sleep(3)\nsys.argv[0] = {str(real)!r}\n"
            f"runpy.run_path({str(real)!r}, run_name='__main__')\n")
    monkeypatch.setattr(runner, "TOOLS_DIR", slow_tools)
    run = make_run(SAMPLE_QUESTION, claim=True)

    ages: list[float] = []
    done = threading.Event()

    def watch():
        try:
            while not done.is_set():
                row = Run.objects.filter(pk=run.pk).values("status", "heartbeat_at").first()
                if row and row["status"] == Run.Status.RUNNING:
                    ages.append((timezone.now() - row["heartbeat_at"]).total_seconds())
                time.sleep(0.1)
        finally:
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        runner.execute_run(run=run)
    finally:
        done.set()
        watcher.join()
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.last_error
    assert time.monotonic() - started > 6  # both validators were slow
    assert run.output_contract["passed"] is True
    assert ages and max(ages) < settings.WORK_STALE_SECONDS, max(ages)


def test_salvaged_outputs_are_capped_like_the_normal_path(tmp_path):
    outputs = tmp_path / "tmp" / "sandbox-local-x" / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "investment_memo.md").write_text("memo")
    (outputs / "huge.txt").write_bytes(b"x" * (jail.MAX_OUTPUT_BYTES + 1))
    (outputs / "exact.txt").write_bytes(b"y" * jail.MAX_OUTPUT_BYTES)
    for index in range(jail.MAX_EXTRA_OUTPUTS + 5):
        (outputs / f"extra-{index:02d}.txt").write_text(str(index))
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")
    (outputs / "link.txt").symlink_to(secret)
    os.mkfifo(outputs / "pipe")
    target = tmp_path / "copied"

    copied = runner._salvage_outputs(tmp_path / "tmp", target,
                                     required=["investment_memo.md", "huge.txt", "missing.md"])

    names = sorted(path.name for path in target.iterdir())
    assert names == sorted(copied)
    assert "investment_memo.md" in names and "exact.txt" in names
    assert "huge.txt" not in names and "link.txt" not in names and "pipe" not in names
    assert len(names) <= 1 + jail.MAX_EXTRA_OUTPUTS
    assert all((target / name).stat().st_size <= jail.MAX_OUTPUT_BYTES for name in names)


def test_salvage_does_not_follow_an_outputs_link_out_of_the_workspace(tmp_path):
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "id_rsa").write_text("host secret")
    workspace = tmp_path / "tmp" / "sandbox-local-x"
    workspace.mkdir(parents=True)
    (workspace / "outputs").symlink_to(host_dir)
    assert runner._salvage_outputs(tmp_path / "tmp", tmp_path / "copied") == []
    assert not (tmp_path / "copied" / "id_rsa").exists()


def test_the_probe_is_cached_per_process(monkeypatch):
    calls = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args)
        return real_run(*args, **kwargs)

    jail.probe.cache_clear()
    monkeypatch.setattr(jail.subprocess, "run", counting_run)
    assert jail.probe("bwrap") is None
    assert jail.probe("bwrap") is None
    assert len(calls) == 1


def test_the_agent_child_refuses_a_job_that_names_no_sandbox():
    from runs.agent_child import JailedSandboxClient, sandbox_client

    with pytest.raises(RuntimeError, match="names no sandbox"):
        sandbox_client(None)
    with pytest.raises(RuntimeError, match="names no sandbox"):
        sandbox_client({"unconfined": "yes"})
    assert isinstance(sandbox_client({"bwrap": "/usr/bin/bwrap"}), JailedSandboxClient)
    assert not isinstance(sandbox_client({"unconfined": True}), JailedSandboxClient)
