"""Is a process still running, and how to start one in its own group: one answer for the engine (run status,
run locks, the worker's client) and both Slicer modules.

Torch-free and signal-free: on Windows `os.kill(pid, 0)` does not test a process, it terminates it, and
`os.WNOHANG` does not exist (Slicer 5.6-5.8 run Python 3.9 there), so Windows asks the kernel for the exit
code instead. A zombie (ended, not yet reaped) is not running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STILL_ACTIVE = 259  # GetExitCodeProcess's answer for a process that has not ended
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000


def _windows_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, int(pid))
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return False
        return code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def process_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """Is `pid` running? With `run_dir`, also (where /proc tells) is it a contrastseg process: a pid the OS
    gave to another program since is not our run."""
    if not pid:
        return False
    if sys.platform == "win32":
        return _windows_alive(int(pid))
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():  # Linux
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return state != "Z" and (run_dir is None or "contrastseg" in command)
    # no /proc (macOS): a zombie child of ours still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(int(pid), os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def own_group() -> dict:
    """Popen options that give a child its own process group, so cancel reaches its whole tree and a terminal's
    Ctrl+C does not (POSIX: a new session, for killpg; Windows: a new process group without a console window,
    for taskkill /T)."""
    import subprocess

    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}
