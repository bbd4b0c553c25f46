"""The jail every agent shell command runs in: bubblewrap (`bwrap`, Debian's `bubblewrap`).

A command runs as `env -i PATH=/usr/bin:/bin bwrap --unshare-all ... -- CMD`:

- new user, PID, network, IPC, UTS and cgroup namespaces: no network at all (not even
  to 127.0.0.1), a fresh /proc that shows only the jail's own processes;
- no capabilities (`--cap-drop ALL`; as root bwrap would otherwise keep them, and with
  CAP_SYS_ADMIN a command can remount the read-only binds read-write) and no new
  privileges (setuid binaries do not elevate);
- bwrap itself starts with an empty environment: it is PID 1 inside the jail and its
  /proc/1/environ is readable there (`--clearenv` would clear only its child);
- the filesystem is an empty read-only root with /usr and a few /etc files bound
  read-only, and the run's workspace bound read-write at its own path (the SDK `cd`s
  there). The workspace holds the SDK's copy of the dataroom (data/, with the validators
  in data/tools/) and outputs/. Nothing of the project, var/, /root, /work or the app's
  temporary directories (not even the rest of the run's own directory) is visible;
- `python` is a link to the system /usr/bin/python3, so the staged validators
  (data/tools/*.py, stdlib only) run inside; the app's virtualenv is not visible.

This module does not import Django: the agent child (runs.agent_child) uses it, and the
runner asks `availability()` before it starts a run.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# bwrap's own environment (it is readable inside the jail as /proc/1/environ).
BWRAP_ENV_PATH = "/usr/bin:/bin"
ENV = "/usr/bin/env" if Path("/usr/bin/env").exists() else "env"
# Where the jail's `python` link lives (a directory on the jail's own read-only root).
JAIL_BIN = "/opt/loopsite/bin"
SYSTEM_PYTHON = "/usr/bin/python3"
# The environment of a jailed command.
JAIL_PATH = f"/usr/bin:/bin:{JAIL_BIN}"
# What a shell and the system Python need from /etc: library lookup, `awk` & co.
# (alternatives), user and group names, the time zone. No other host configuration.
ETC_ENTRIES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
               "passwd", "group", "mime.types")
# Top-level system paths, bound read-only (or re-created as links where the host has a link).
SYSTEM_ENTRIES = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
PROBE_TIMEOUT_SECONDS = 20
# What is taken out of the workspace's outputs/ (by the agent child, or salvaged by the runner after
# a crash or timeout): the required artifacts, then up to MAX_EXTRA_OUTPUTS other top-level files,
# each at most MAX_OUTPUT_BYTES.
MAX_EXTRA_OUTPUTS = 20
MAX_OUTPUT_BYTES = 2 * 1024 * 1024

UNCONFINED_SETTING = "LOOPSITE_UNCONFINED_SANDBOX"
FIX_HINT = (f"Install bubblewrap (`apt-get install bubblewrap`, or `make install`), or set "
            f"{UNCONFINED_SETTING}=1 to run the agent's commands unconfined at your own risk.")


def bwrap_argv(bwrap: str, *, workspace: Path, cwd: Path | None = None) -> list[str]:
    """The command prefix that runs a command inside the jail; append the command's argv."""
    workspace = Path(workspace)
    argv = [ENV, "-i", f"PATH={BWRAP_ENV_PATH}", bwrap,
            "--unshare-all", "--die-with-parent", "--new-session",
            # Run as root, bwrap leaves the command every capability in its user namespace, enough
            # to remount /usr read-write (and write the host's /usr as uid 0). Drop them all.
            "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev"]
    for name in SYSTEM_ENTRIES:
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for name in ETC_ENTRIES:
        path = Path("/etc") / name
        if path.exists():
            argv += ["--ro-bind", str(path), str(path)]
    if Path(SYSTEM_PYTHON).exists() and not Path("/usr/bin/python").exists():
        argv += ["--dir", JAIL_BIN, "--symlink", SYSTEM_PYTHON, f"{JAIL_BIN}/python"]
    # The SDK writes the manifest into the workspace with commands (chmod on data/ too), so all of
    # it is writable; the runner validates the run against its own staged copy of the dataroom.
    argv += ["--bind", str(workspace), str(workspace)]
    argv += [
        "--remount-ro", "/",
        "--chdir", str(cwd or workspace),
        "--setenv", "PATH", JAIL_PATH,
        "--setenv", "HOME", str(workspace),
        "--setenv", "TMPDIR", str(workspace),
        "--setenv", "LANG", "C.UTF-8",
        "--",
    ]
    return argv


def wrap(bwrap: str, command: Sequence[str], *, workspace: Path, cwd: Path | None = None) -> list[str]:
    """`command` (an argv) as it runs inside the jail."""
    return [*bwrap_argv(bwrap, workspace=workspace, cwd=cwd), *[str(part) for part in command]]


@dataclass(frozen=True)
class Availability:
    """Whether agent runs may start, and how their commands run."""

    confined: bool  # commands run inside bwrap
    bwrap: str = ""  # the resolved bwrap path when confined
    error: str = ""  # why runs must not start (empty when they may)

    @property
    def usable(self) -> bool:
        return not self.error


def availability(*, bwrap: str = "bwrap", unconfined: bool = False) -> Availability:
    """Can agent runs start, and how? `unconfined` (LOOPSITE_UNCONFINED_SANDBOX=1, the operator's
    explicit choice, announced by a banner on every page): yes, commands run on the host. Else with
    a working bwrap: yes, confined; without one: no, with a message that says why and how to fix it."""
    if unconfined:
        return Availability(confined=False)
    problem = probe(bwrap)
    if problem is None:
        return Availability(confined=True, bwrap=resolve(bwrap) or bwrap)
    return Availability(
        confined=False,
        error=f"The agent's shell cannot be confined, so the run was not started: {problem} {FIX_HINT}",
    )


def resolve(bwrap: str) -> str | None:
    """bwrap's absolute path (a bare name is looked up on the system PATH)."""
    if os.sep in bwrap:
        return bwrap if os.access(bwrap, os.X_OK) and Path(bwrap).is_file() else None
    return shutil.which(bwrap, path=os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]))


@functools.lru_cache(maxsize=8)
def probe(bwrap: str) -> str | None:
    """None if `bwrap` can run the jail here (checked once per process), else why not."""
    path = resolve(bwrap)
    if path is None:
        return f"bubblewrap was not found at {bwrap!r}."
    with tempfile.TemporaryDirectory(prefix="loopsite-jail-probe-") as workspace:
        try:
            done = subprocess.run(wrap(path, ["true"], workspace=Path(workspace)), capture_output=True,
                                  timeout=PROBE_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{path} could not be started ({type(exc).__name__}: {exc})."
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", errors="replace").strip()[-500:] or f"exit code {done.returncode}"
        return f"{path} cannot create the jail on this machine ({detail})."
    return None


def output_names(required: Sequence[str], present: Sequence[str]) -> list[str]:
    """Which files of outputs/ to take: every required name, then other present files by name, up to
    MAX_EXTRA_OUTPUTS of them."""
    names = list(required)
    extras = sorted(name for name in set(present) if name not in names)
    return names + extras[:MAX_EXTRA_OUTPUTS]
