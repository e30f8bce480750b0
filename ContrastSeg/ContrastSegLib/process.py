"""Running the engine CLI in a separate process and reading its JSON-lines progress stream.

Both Slicer modules run every long job this way (DESIGN.md): Slicer stays responsive, a crash in torch
cannot take Slicer down, and cancel kills the whole process tree. Plain Python (no Qt): the widgets call
`poll()` from a QTimer; tests call `wait()`.

A `detached` process (training) gets its own session and writes its stream to a file in its run folder,
so it outlives the Slicer session that started it; `attach()` re-reads that file after Slicer restarts.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contrastseg.processes import own_group


def engine_command(*args: str, python: str | None = None) -> list[str]:
    """The command line that runs `contrastseg ARGS` with `python` (in Slicer: PythonSlicer)."""
    return [python or sys.executable, "-m", "contrastseg.cli", *args]


@dataclass
class EngineEvent:
    """One parsed line of the engine's stream (`event` is progress, output, done or error; see progress.py)."""

    event: str
    data: dict

    @classmethod
    def parse(cls, line: str) -> "EngineEvent | None":
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return None
        return cls(data.get("event", "progress"), data)


@dataclass
class EngineProcess:
    """A running `contrastseg` command; feed events to `on_event`, keep stderr for error messages."""

    command: list[str]
    on_event: Callable[[EngineEvent], None] | None = None
    env: dict | None = None
    stream_file: Path | None = None  # detached: stdout goes here, read back by poll()
    detached: bool = False
    events: list[EngineEvent] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    pid: int | None = None
    _offset: int = 0
    _buffer: str = ""
    _stderr_file: Path | None = None
    returncode: int | None = None
    cancelled: bool = False
    _kill_at: float | None = None  # when a cancelled process still alive gets SIGKILL (cancel(wait=False))

    def start(self) -> "EngineProcess":
        env = dict(os.environ, **(self.env or {}), PYTHONUNBUFFERED="1")
        if self.detached:
            if self.stream_file is None:
                raise ValueError("a detached process needs a stream_file")
            self.stream_file.parent.mkdir(parents=True, exist_ok=True)
            self._stderr_file = self.stream_file.with_suffix(".stderr.txt")
            with open(self.stream_file, "ab") as out, open(self._stderr_file, "ab") as err:
                self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                             env=env, **own_group())
        else:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, env=env, bufsize=0, **own_group())
            # a reader thread per pipe: non-blocking pipes (os.set_blocking) do not exist on Windows
            self._pipes = {"out": _PipeReader(self.proc.stdout), "err": _PipeReader(self.proc.stderr)}
        self.pid = self.proc.pid
        self._stderr_text = ""
        return self

    @classmethod
    def attach(cls, pid: int, stream_file: Path, on_event=None) -> "EngineProcess":
        """Follow a detached process started earlier (e.g. before Slicer was restarted) by pid and stream file."""
        p = cls(command=[], on_event=on_event, stream_file=stream_file, detached=True)
        p.pid = pid
        p._stderr_file = stream_file.with_suffix(".stderr.txt")
        p._stderr_text = ""
        return p

    def _read_new(self, final: bool = False) -> str:
        if self.detached:
            if not self.stream_file.exists():
                return ""
            with open(self.stream_file, "r") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
            return text
        self._stderr_text += self._pipes["err"].take(final)
        return self._pipes["out"].take(final)

    def running(self) -> bool:
        self._escalate()
        return self._alive()

    def _alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def poll(self) -> list[EngineEvent]:
        """Read what the process wrote since the last call; returns (and dispatches) the new events."""
        alive = self.running()
        self._buffer += self._read_new(final=not alive)
        *lines, self._buffer = self._buffer.split("\n")
        if not alive:  # the last line may lack its newline
            lines.append(self._buffer)
            self._buffer = ""
        new = [e for e in (EngineEvent.parse(line) for line in lines) if e is not None]
        for e in new:
            self.events.append(e)
            if self.on_event:
                self.on_event(e)
        if not alive and self.returncode is None:
            self.returncode = self.proc.returncode if self.proc is not None else _exit_code_from_events(self.events)
        return new

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int:
        """Poll until the process ends (or `timeout` seconds); returns its exit code (None on timeout)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.running():
            self.poll()
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(interval)
        self.poll()
        return self.returncode

    def cancel(self, grace: float = 3.0, wait: bool = True) -> None:
        """Stop the whole process tree: SIGTERM to its process group, SIGKILL after `grace` seconds.

        `wait=False` returns at once (the GUI thread must not sleep through the grace period): `running()` and
        `poll()` send the SIGKILL once the grace period is over."""
        self.cancelled = True
        if self.pid is None or not self.running():
            return
        if os.name == "nt":  # Windows has no process groups (nor killpg): taskkill /T ends the tree
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            if self.proc is not None and wait:
                self.proc.wait()
            self.poll()
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self._kill_at = time.monotonic() + grace
        if not wait:
            return
        while self.running() and time.monotonic() < self._kill_at:
            time.sleep(0.05)
        self._escalate(force=True)
        if self.proc is not None:
            self.proc.wait()
        self.poll()

    def _escalate(self, force: bool = False) -> None:
        """SIGKILL a cancelled process still alive after its grace period."""
        kill_at = self._kill_at
        if kill_at is None or not (force or time.monotonic() >= kill_at):
            return
        if self._alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_at = None

    def error_message(self) -> str | None:
        """The engine's own sentence for a failure (its error event, else the last stderr line)."""
        for e in reversed(self.events):
            if e.event == "error":
                return e.data.get("message")
        text = self._stderr_text
        if self._stderr_file is not None and self._stderr_file.exists():
            text = self._stderr_file.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else None


class _PipeReader:
    """Reads a child's pipe on a daemon thread (blocking reads work on every OS); `take()` returns what
    arrived since the last call, decoded (a UTF-8 character split across reads waits for its rest)."""

    def __init__(self, pipe):
        self._pipe = pipe
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._pipe.read1(65536) if hasattr(self._pipe, "read1") else self._pipe.read(65536)
            except (OSError, ValueError):  # closed
                break
            if not data:
                break
            with self._lock:
                self._chunks.append(data)

    def take(self, final: bool = False) -> str:
        """`final`: the child has ended; wait (briefly) until its pipe is drained, so no last line is lost."""
        if final:
            self._thread.join(timeout=10)
        with self._lock:
            data, self._chunks = b"".join(self._chunks), []
        return self._decoder.decode(data)


def _exit_code_from_events(events: list[EngineEvent]) -> int:
    if any(e.event == "done" for e in events):
        return 0
    return 1


def pid_alive(pid: int | None) -> bool:
    """Is `pid` still running? The engine's one test (it never signals a process on Windows, where
    `os.kill(pid, 0)` would terminate it), without importing torch."""
    from contrastseg.processes import process_alive

    return process_alive(pid)
