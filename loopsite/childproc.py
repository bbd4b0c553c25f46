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


def die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it when the worker dies, so no orphan keeps running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the sweep still recovers the row
        pass


PREEXEC = die_with_parent if sys.platform.startswith("linux") else None


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
