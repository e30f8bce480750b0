"""The client side of the warm worker (`contrastseg serve --stdio`): what the Slicer module, scripts and tests use.

Torch-free, so Slicer's own process can import it. The worker's stdout is read on a thread and every message
is filed under its request id, so a caller can either wait for an answer (`answer`, `request`) or, from a Qt
timer, take what has arrived so far without blocking (`take`). Several requests may be in flight: the worker
answers them in order.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time

from .errors import ContrastSegError
from .processes import own_group

PROTOCOL = "contrastseg-serve/1"


class Client:
    """Starts and talks to one worker process.

    `request(op, **fields)` sends one request and returns its answer; progress events go to `on_event`. A worker
    that dies raises ContrastSegError naming its exit code and last error line; `restart()` starts a fresh one
    (the open CTs are gone with the old process and must be opened again).
    """

    def __init__(self, command: list[str] | None = None, env: dict | None = None):
        self.command = command or [sys.executable, "-m", "contrastseg.cli", "serve", "--stdio"]
        self.env = env
        self.proc = None
        self.next_id = 0
        self.ready: dict | None = None

    # ------------------------------------------------------------------ process
    def start(self, wait: bool = True, timeout: float = 300.0) -> "Client":
        """Start the worker; with `wait`, until it says it is ready (importing torch takes seconds). Requests sent
        before that wait in its stdin, so a caller that polls need not wait (`wait=False`)."""
        # the protocol is UTF-8 whatever the locale (Windows' is often cp1252); a byte that is not UTF-8 becomes a
        # replacement character instead of an exception that ended the reader thread and left take() waiting
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.env,
                                     **own_group())
        self._messages: dict = collections.defaultdict(collections.deque)  # request id -> messages not yet taken
        self._changed = threading.Condition()
        self._eof = False
        self.outstanding: set = set()  # ids sent and not answered yet
        self.abandoned: set = set()  # ids whose answer nobody waits for any more (cancelled by the caller)
        self._stderr_tail: collections.deque = collections.deque(maxlen=20)
        threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()
        self.ready = None
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 300.0) -> dict:
        """The worker's ready message (its protocol checked), waiting for it if it has not come yet."""
        if self.ready is None:
            msg = self._next(None, timeout, "at start")
            if msg.get("event") != "ready" or msg.get("protocol") != PROTOCOL:
                raise ContrastSegError(f"the worker speaks {msg.get('protocol')!r}, not {PROTOCOL}")
            self.ready = msg
        return self.ready

    def restart(self) -> "Client":
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._eof

    @property
    def busy(self) -> bool:
        """A request someone still waits for is in a live worker (abandoned ones only delay the queue)."""
        return bool(self.outstanding - self.abandoned) and self.alive()

    # ------------------------------------------------------------------ requests
    def send(self, op: str, **fields) -> int:
        self.next_id += 1
        rid = self.next_id
        with self._changed:  # before the line goes out: its answer may come before send() returns
            self.outstanding.add(rid)
        try:
            self.send_line(json.dumps({"id": rid, "op": op, **fields}))
        except ContrastSegError:
            with self._changed:
                self.outstanding.discard(rid)
            raise
        return rid

    def send_line(self, line: str) -> None:
        """One raw line to the worker (send() is the way to make requests; tests use this for malformed input)."""
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, AttributeError, ValueError):
            raise ContrastSegError(self._dead("before it got a request")) from None

    def answer(self, rid, on_event=None, timeout: float | None = None) -> dict:
        """Wait for the answer to request `rid`, passing its progress events to `on_event`."""
        while True:
            msg = self._next(rid, timeout, f"while answering request {rid}")
            if "ok" in msg:
                return msg
            if on_event is not None:
                on_event(msg)

    def request(self, op: str, on_event=None, **fields) -> dict:
        return self.answer(self.send(op, **fields), on_event)

    def take(self, rid) -> list[dict]:
        """The messages for `rid` that have arrived, without waiting. Raises ContrastSegError if the worker died
        before answering `rid`."""
        if self.ready is None and self._messages.get(None):  # started without waiting: check its protocol now
            self.wait_ready(timeout=0)
        with self._changed:
            queued = self._messages.get(rid)
            taken = list(queued or ())
            if queued is not None:
                queued.clear()
            if not taken and self._eof and rid in self.outstanding:
                dead = True
            else:
                dead = False
        if dead:
            raise ContrastSegError(self._dead(f"while answering request {rid}"))
        return taken

    def abandon(self, rid) -> None:
        """Nobody waits for `rid` any more (its messages are dropped as they come)."""
        with self._changed:
            self.abandoned.add(rid)
            self._messages.pop(rid, None)

    # ------------------------------------------------------------------ reading
    def _next(self, rid, timeout: float | None, when: str) -> dict:
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._messages.get(rid):
                if self._eof:
                    break
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise ContrastSegError(f"the ContrastSeg worker gave no answer {when} within {timeout:.0f} s")
                self._changed.wait(left)
            if self._messages.get(rid):
                return self._messages[rid].popleft()
        raise ContrastSegError(self._dead(when))

    def _read_stdout(self, proc) -> None:
        """Runs on a thread per process; after a restart the old process's thread leaves the new state alone.
        However the reading ends (end of file, or an error), the end is marked, so nobody waits for ever."""
        try:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError:  # a stray print from a library: not part of the protocol
                    msg = None
                with self._changed:
                    if proc is not self.proc:
                        return
                    if msg is None:
                        self._stderr_tail.append(line.rstrip())
                        continue
                    rid = msg.get("id")
                    if "ok" in msg:
                        self.outstanding.discard(rid)
                    if rid not in self.abandoned:
                        self._messages[rid].append(msg)
                    self._changed.notify_all()
        except (OSError, ValueError) as err:  # a closed pipe, an undecodable stream
            self._stderr_tail.append(f"reading the worker's answers failed: {err}")
        finally:
            with self._changed:
                if proc is self.proc:
                    self._eof = True
                    self._changed.notify_all()

    def _read_stderr(self, proc) -> None:
        try:
            for line in proc.stderr:
                if proc is not self.proc:
                    return
                if line.strip():
                    self._stderr_tail.append(line.rstrip())
        except (OSError, ValueError):  # the pipe closed under us: its last words are what we have
            pass

    def _dead(self, when: str) -> str:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        last = next((ln for ln in reversed(self._stderr_tail) if ln.strip()), None) if self.proc is not None else None
        why = f"; its last words: {last[-200:]}" if last else ""
        return f"the ContrastSeg worker stopped {when} (exit code {code}{why}); restart it and open the CT again"
