"""One CPU-heavy flrec process per machine, or an explicit thread split.

torch uses every core by default, and its OpenMP workers spin while they wait: two such processes
on the same cores slow *each other* 10-50x (measured on 2 cores). ``flrec compare`` therefore runs
its cells one after another in one process. When a user starts a second heavy command anyway, the
CLI warns once with the fix (or, with ``OMP_NUM_THREADS`` set, trusts the user's split).
"""

from __future__ import annotations

import os
from pathlib import Path

JOBS_DIR = Path(os.environ.get("FLREC_CACHE", Path.home() / ".cache" / "flrec")) / "cpu-jobs"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_cpu_job(jobs_dir: Path = JOBS_DIR) -> list[int]:
    """Record this process as a CPU-heavy flrec job; return the PIDs of the other live ones.

    Stale records (processes that ended without cleaning up) are removed on the way.
    """
    jobs_dir.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    others = []
    for f in jobs_dir.glob("*.pid"):
        try:
            pid = int(f.stem)
        except ValueError:
            continue
        if pid == me:
            continue
        if _alive(pid):
            others.append(pid)
        else:
            f.unlink(missing_ok=True)
    (jobs_dir / f"{me}.pid").touch()
    import atexit

    atexit.register(lambda: (jobs_dir / f"{me}.pid").unlink(missing_ok=True))
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
