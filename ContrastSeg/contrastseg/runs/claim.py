"""One process per run folder: the OS lock that `run start` holds while it executes, and that `run plan` holds
while it claims a run's name and writes its plan.

Why a lock and not a check: two `run plan --name X` at the same moment both saw no `runs/X/plan.json` and
both wrote one. Now each takes `runs/X/.lock` (non-blocking) and checks for a plan while holding it, so
exactly one plans X; the other is refused in one sentence. The OS drops the lock when its process ends,
even by SIGKILL, so a crash leaves nothing to clean up by hand. Torch- and SimpleITK-free (Slicer plans runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from ..errors import ContrastSegError

LOCK = ".lock"


class RunTaken(ContrastSegError):
    """The run folder holds a plan already, or another process is planning or running it."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, busy: str | None = None, error: type = ContrastSegError):
    """Hold RUN/.lock; `busy` is the sentence (raised as `error`) when another process holds it (default: the
    run is running)."""
    from ..outputs import os_error_message

    run_dir = Path(run_dir)
    try:
        fh = open(run_dir / LOCK, "a+")
    except OSError as err:  # a read-only or missing run folder
        raise ContrastSegError(os_error_message(err, run_dir / LOCK)) from None
    try:
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise error(busy or f"run {run_dir.name} is already running in another process; "
                                           f"`contrastseg run status {run_dir}` shows it") from None
        yield
    finally:
        fh.close()


@contextlib.contextmanager
def claim(run_dir: Path, plan_name: str):
    """Make `run_dir` (if needed) and hold its lock while the block writes the plan; refused if another process
    holds it or a plan (`plan_name`) is already there. If the block fails, a folder this call created is
    removed again, so a failed plan leaves no half-made run (and does not take its name)."""
    from ..outputs import os_error_message

    from ..guards import check_home_of

    run_dir = Path(run_dir)
    check_home_of(run_dir, "run")
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(run_dir)
            created = True  # only one process can have made it
        except FileExistsError:
            created = False
        if not run_dir.is_dir():
            raise ContrastSegError(f"run folder {run_dir} is a file, not a folder; choose another --run")
    except OSError as err:
        raise ContrastSegError(os_error_message(err, run_dir)) from None
    taken = (f"{run_dir} already holds a run, or another `contrastseg run plan` is planning it right now; choose "
             f"another name (`contrastseg run start {run_dir}` starts or resumes the one there)")
    locked = done = False
    try:
        with run_lock(run_dir, busy=taken, error=RunTaken):
            locked = True
            if (run_dir / plan_name).exists():
                raise RunTaken(taken)
            try:
                yield run_dir
            except ContrastSegError:
                raise
            except OSError as err:  # a write that is not yet a sentence (mkdir of data/, ...)
                raise ContrastSegError(os_error_message(err, Path(err.filename or run_dir))) from None
            done = True
    finally:
        if locked and created and not done:
            shutil.rmtree(run_dir, ignore_errors=True)
