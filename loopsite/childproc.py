"""Child processes that run model-driven code (the agent, HALO).

They get an environment with no secrets in it (the API key travels on stdin), die
with the worker that started them, and are killed as a whole process group.
"""

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def secretless_env(workdir: Path) -> dict[str, str]:
    """The child's whole environment: a PATH with this venv's python, and nothing secret."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def _libc_prctl():  # noqa: ANN202
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: the sweep still recovers the row
        return None


# Resolved once, here: the run worker starts children from many threads at once, and between fork
# and exec the child may only do what takes no lock another thread could hold (no dlopen, no import).
_PRCTL = _libc_prctl()


def die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it when the worker dies, so no orphan keeps running.
    (Linux sends the signal when the *thread* that started the child ends: Celery's pool threads live
    as long as the worker.)"""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


PREEXEC = die_with_parent if _PRCTL is not None and sys.platform.startswith("linux") else None


def stop_with_parent() -> None:
    """Ask for SIGTERM when the process that started this one ends (for `manage.py run_all` under make: a
    signal sent to make alone would otherwise leave web and workers running). A process whose parent has
    already gone is told at once."""
    if _PRCTL is None or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything it started, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
