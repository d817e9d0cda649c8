"""One CPU-heavy flrec process per machine, or an explicit thread split.

torch uses every core by default, and its OpenMP workers spin while they wait: two such processes
on the same cores slow *each other* 10-50x (measured on 2 cores). ``flrec compare`` therefore runs
its cells one after another in one process. When a user starts a second heavy command anyway, the
CLI warns once with the fix (or, with ``OMP_NUM_THREADS`` set, trusts the user's split).
"""

from __future__ import annotations

import os
from pathlib import Path


def jobs_dir() -> Path:
    """Where CPU-heavy flrec processes register (``FLREC_CPU_JOBS_DIR`` overrides; the tests use their own)."""
    return Path(os.environ.get("FLREC_CPU_JOBS_DIR") or Path.home() / ".cache" / "flrec" / "cpu-jobs")


def _ancestors() -> set[int]:
    """PIDs of this process's parents (Linux /proc; elsewhere just the parent): a command that an flrec
    process started (e.g. a test or a launcher running ``flrec ...``) does not compete with it."""
    out, pid = set(), os.getppid()
    for _ in range(64):
        if pid <= 1 or pid in out:
            break
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_cpu_job(folder: Path | None = None) -> list[int]:
    """Record this process as a CPU-heavy flrec job; return the PIDs of the other live ones (not our
    own ancestors). Stale records (processes that ended without cleaning up) are removed on the way.
    """
    folder = jobs_dir() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    me, parents = os.getpid(), _ancestors()
    others = []
    for f in folder.glob("*.pid"):
        try:
            pid = int(f.stem)
        except ValueError:
            continue
        if pid == me or pid in parents:
            continue
        if _alive(pid):
            others.append(pid)
        else:
            f.unlink(missing_ok=True)
    (folder / f"{me}.pid").touch()
    import atexit

    atexit.register(lambda: (folder / f"{me}.pid").unlink(missing_ok=True))
    return sorted(others)


def oversubscription_warning(others: list[int], env: dict | None = None) -> str | None:
    """The one-line warning for ``others`` (None when there is nothing to warn about).

    >>> oversubscription_warning([], {}) is None, oversubscription_warning([42], {"OMP_NUM_THREADS": "1"}) is None
    (True, True)
    >>> oversubscription_warning([42], {}).startswith("note: another flrec process (PID 42)")
    True
    """
    env = os.environ if env is None else env
    if not others or env.get("OMP_NUM_THREADS"):
        return None
    pids = ", ".join(map(str, others))
    return (f"note: another flrec process (PID {pids}) is using this machine's CPU; two processes with all threads "
            "each slow each other 10-50x. Run one at a time, or split the cores: OMP_NUM_THREADS=<cores/jobs> flrec ...")
