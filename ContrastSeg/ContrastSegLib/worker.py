"""The warm engine worker as the Slicer module uses it: one `contrastseg serve --stdio` process per Slicer
session, shared by Segment and the click correction, so the model is loaded once and an open CT stays open.

Plain Python (no Qt). `EngineWorker` starts the process on first use and again after it died (the next
request says why the old one stopped), and remembers which volume nodes the worker has open, so a second
Segment or a click on the same CT does not write and read it again. `WorkerJob` is one segmentation seen as a
process the Logic polls (start / poll / running / cancel / returncode / error_message, like EngineProcess):
it sends `open` and `segment` together, without waiting, and turns the worker's messages into the CLI's
event stream, so the Logic loads the coarse map, then the refined one, the same way as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from contrastseg.errors import ContrastSegError

from . import nodes
from .process import EngineEvent, engine_command

MAX_OPEN_CTS = 2  # each open CT holds its image and refined grid in the worker's memory


class EngineWorker:
    """One worker process and the volume nodes it has open."""

    def __init__(self, python: str, env: dict | None = None, device: str = "auto", threads: int = 0):
        self.python, self.env, self.device, self.threads = python, dict(env or os.environ), device, int(threads or 0)
        self.client = None
        self.opened: dict[str, tuple] = {}  # volume node ID -> version() of the CT the worker has open
        self.work = Path(tempfile.mkdtemp(prefix="ContrastSegWorker-"))
        self.stopped_because: str | None = None  # why the last worker process died, told with the next answer

    def matches(self, python: str, env: dict | None, device: str, threads: int) -> bool:
        return (self.python, self.device, self.threads) == (python, device, int(threads or 0)) and self.env == dict(env or os.environ)

    def connection(self, wait: bool = True):
        """The running worker's Client; a fresh process if there is none or it died (its open CTs are gone).
        `wait=False` does not wait for the worker to be ready (requests queue in its stdin meanwhile)."""
        from contrastseg.serve_client import Client

        if self.client is not None and not self.client.alive():
            self.client.stop()
            self.client = None
        if self.client is None:
            self.opened.clear()
            command = engine_command("serve", "--stdio", "--device", self.device, python=self.python)
            if self.threads > 0:
                command += ["--threads", str(self.threads)]
            self.client = Client(command, env=self.env).start(wait=wait)
        elif wait:
            self.client.wait_ready()
        return self.client

    @staticmethod
    def version(volume_node, model: str | None) -> tuple:
        """What the worker's copy of a volume depends on: the node (geometry, name) and its voxels (edited in
        place, only the image data's MTime changes), and the model it was opened with."""
        image = volume_node.GetImageData()
        return (volume_node.GetMTime(), image.GetMTime() if image is not None else 0, model or "")

    def send_open(self, volume_node, model: str | None) -> int | None:
        """Write the volume and ask the worker to open it under the node's ID (no wait); None if it is open."""
        client = self.connection(wait=False)  # first: a worker that died while idle took its open CTs with it
        key = volume_node.GetID()
        if self.opened.get(key) == self.version(volume_node, model):
            self.opened[key] = self.opened.pop(key)  # most recently used last
            return None
        self.opened.pop(key, None)  # a changed volume (or another model) is opened again under the same key
        for old in list(self.opened)[: max(0, len(self.opened) - MAX_OPEN_CTS + 1)]:
            client.abandon(client.send("close", ct=old))  # free the least recently used CT's memory
            del self.opened[old]
        path = nodes.write_volume(volume_node, self.work / f"{key}.nrrd")
        rid = client.send("open", ct=str(path), model=model or None, key=key)
        self.opened[key] = self.version(volume_node, model)
        return rid

    def open(self, volume_node, model: str | None) -> str:
        """Open the volume in the worker and wait for it (the click correction); returns its key."""
        rid = self.send_open(volume_node, model)
        key = volume_node.GetID()
        if rid is not None:
            answer = self.client.answer(rid)
            self.opened_done(key, answer)
            if not answer["ok"]:
                raise ContrastSegError(answer["error"])
        return key

    def opened_done(self, key: str, answer: dict) -> None:
        """The worker answered an open: forget the volume if it failed; its file is not needed any more."""
        if not answer.get("ok"):
            self.opened.pop(key, None)
        (self.work / f"{key}.nrrd").unlink(missing_ok=True)

    def forget(self) -> None:
        """The worker died or was stopped: nothing is open any more."""
        self.opened.clear()

    def died(self, message: str) -> str:
        """Remember and word a worker death for the user."""
        self.forget()
        self.stopped_because = message
        return f"{message.split('; restart it')[0]}. The engine starts again at the next request."

    def shutdown(self) -> None:
        if self.client is not None:
            if self.client.alive():
                try:
                    self.client.abandon(self.client.send("shutdown"))
                except ContrastSegError:
                    pass
            self.client.stop()
            self.client = None
        self.forget()
        shutil.rmtree(self.work, ignore_errors=True)


_shared: EngineWorker | None = None


def shared_worker(python: str, env: dict | None = None, device: str = "auto", threads: int = 0) -> EngineWorker:
    """The session's worker; a new one (the old one stopped) when the interpreter, environment, device or thread
    count asked for differs from the running one's."""
    global _shared
    if _shared is None or not _shared.matches(python, env, device, threads):
        if _shared is not None:
            if _shared.client is not None and _shared.client.busy:
                raise ContrastSegError("the engine is still busy with a segmentation started with other settings "
                                       "(device, threads); wait for it or cancel it")
            _shared.shutdown()
        _shared = EngineWorker(python, env, device, threads)
    return _shared


def shutdown_shared_worker() -> None:
    """Stop the session's worker (module cleanup, tests)."""
    global _shared
    if _shared is not None:
        _shared.shutdown()
        _shared = None


@dataclass
class SegmentJob:
    """What one segmentation asks the engine for; the runner (WorkerJob, or a test's stand-in) carries it out."""

    volume_node: Any
    request: dict  # the worker's segment fields: output, coarse_output, organs, coarse_only
    model: str | None
    device: str
    threads: int
    python: str
    env: dict


class WorkerJob:
    """One segmentation in the shared worker, polled like a process."""

    def __init__(self, job: SegmentJob, on_event: Callable[[EngineEvent], None] | None = None):
        self.job, self.on_event = job, on_event
        self.events: list[EngineEvent] = []
        self.returncode: int | None = None
        self.cancelled = False
        self.worker: EngineWorker | None = None
        self.open_id = self.segment_id = None
        self.pid: int | None = None  # the worker process this job runs in

    def start(self) -> "WorkerJob":
        j = self.job
        self.worker = shared_worker(j.python, j.env, j.device, j.threads)
        if self.worker.client is not None and self.worker.client.busy:
            raise ContrastSegError("the engine is still busy with another request; wait for it or cancel it")
        restarting = self.worker.client is None or not self.worker.client.alive()
        self.open_id = self.worker.send_open(j.volume_node, j.model)
        client = self.worker.connection(wait=False)
        self.pid = client.proc.pid
        self.segment_id = client.send("segment", ct=j.volume_node.GetID(), **j.request)
        message = "starting the engine" if restarting else ("opening the CT" if self.open_id else "segmenting")
        self._emit("progress", {"stage": "read", "fraction": 0.0, "eta": None, "message": message})
        return self

    def running(self) -> bool:
        return self.returncode is None and not self.cancelled

    def poll(self) -> list[EngineEvent]:
        if not self.running():
            return []
        new_start = len(self.events)
        client = self.worker.client
        try:
            if self.open_id is not None:
                for msg in client.take(self.open_id):
                    if "ok" in msg:
                        self.worker.opened_done(self.job.volume_node.GetID(), msg)
                        self.open_id = None
                        if not msg["ok"]:  # the segment behind it can only fail too: say why the CT would not open
                            client.abandon(self.segment_id)
                            return self._end(2, msg["error"], new_start)
            for msg in client.take(self.segment_id):
                if "ok" not in msg:
                    self._emit(msg.get("event", "progress"), msg)
                elif msg["ok"]:
                    self._emit("done", {"timings": msg.get("timings") or {}, "organs": msg.get("organs"),
                                        "notes": msg.get("notes") or []})
                    self.returncode = 0
                else:
                    return self._end(2, msg.get("error") or "the engine failed", new_start)
        except ContrastSegError as err:  # the worker died: say why; the next request starts a new one
            code = client.proc.returncode if client.proc is not None and client.proc.returncode is not None else 1
            return self._end(code, self.worker.died(str(err)), new_start)
        return self.events[new_start:]

    def cancel(self) -> None:
        """Stop the request without waiting: the worker drops it at its next progress report (or before it
        starts); anything it still sends for it is discarded, and it writes no file after the cancel."""
        if not self.running():
            return
        self.cancelled = True
        self.returncode = -15
        client = self.worker.client
        for rid in (self.open_id, self.segment_id):
            if rid is not None and client is not None and client.alive():
                try:
                    client.abandon(client.send("cancel", target=rid))
                except ContrastSegError:
                    pass
                client.abandon(rid)
        if self.open_id is not None:  # it may never have opened: open it again next time
            key = self.job.volume_node.GetID()
            self.worker.opened.pop(key, None)
            try:
                (self.worker.work / f"{key}.nrrd").unlink(missing_ok=True)
            except OSError:  # Windows: the worker is reading it; the worker's folder goes at shutdown
                pass

    def error_message(self) -> str | None:
        return next((e.data.get("message") for e in reversed(self.events) if e.event == "error"), None)

    def _end(self, code: int, message: str, new_start: int) -> list[EngineEvent]:
        self._emit("error", {"message": message})
        self.returncode = code
        return self.events[new_start:]

    def _emit(self, kind: str, data: dict) -> None:
        event = EngineEvent(kind, dict(data, event=kind))
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
