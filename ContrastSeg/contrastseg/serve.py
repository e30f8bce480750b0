"""The warm engine worker (`contrastseg serve --stdio`): one process that keeps the model, the open CTs and their
refined grids in memory, and answers JSON lines on stdin with JSON lines on stdout.

Protocol `contrastseg-serve/1` (README "The warm worker"). On start the worker says
`{"event": "ready", "protocol": "contrastseg-serve/1", "version": ...}`. Every request is one JSON object
with an `id` (any JSON value, echoed back) and an `op`:

    {"id": 1, "op": "open", "ct": PATH, "model": NAME|null}                 -> {"id": 1, "ok": true, "ct": "ct1", ...}
    {"id": 2, "op": "segment", "ct": "ct1", "output": PATH, "organs": [..]}  -> progress events, then the result
    {"id": 3, "op": "refine", "ct": "ct1", "organ": KEY, "labels": PATH|null (null: the last segmentation),
     "output": PATH, "points_ras": [[x, y, z], ...], "neg_points_ras": [...], "box_ras": [x0,y0,z0,x1,y1,z1]|null}
    {"id": 4, "op": "cancel", "target": 2}                                     -> the running request 2 ends "cancelled"
    {"id": 5, "op": "close", "ct": "ct1"}        {"id": 6, "op": "shutdown"}

Answers are `{"id", "ok": true, ...}` or `{"id", "ok": false, "error": "one sentence"}`; progress events are
`{"id", "event": "progress", "stage", "fraction", ...}` as in the CLI's JSON stream. A malformed line gets an
error with `"id": null`. Requests run one at a time in arrival order; `cancel` is read while one runs. The
worker stays a separate process, so a crash in torch cannot take Slicer down; the client restarts it.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from . import __version__
from .errors import ContrastSegError
from .progress import Progress

PROTOCOL = "contrastseg-serve/1"


class Cancelled(Exception):
    """The client cancelled the running request."""


class RequestProgress(Progress):
    """The CLI's JSON progress, tagged with the request id; a cancel flag stops the work at the next report."""

    def __init__(self, request_id, out: "Writer", cancel: threading.Event):
        super().__init__("json", {"preprocess": 0.05, "coarse": 0.15, "refine": 0.8}, stream=None)
        self.request_id, self.out, self.cancel = request_id, out, cancel

    def emit(self, record: dict) -> None:
        self.out.send({"id": self.request_id, **record})

    def update(self, fraction: float, message: str = "", force: bool = False, **extra) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        super().update(fraction, message, force, **extra)


class Writer:
    """One JSON object per line on stdout, whole lines only (two threads write)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def send(self, record: dict) -> None:
        with self.lock:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()


@dataclass
class Session:
    """An open CT: the image, its model, and what is worth keeping between requests."""

    image: object
    model: object
    path: str
    fine: object = None  # the refined grid (Prepared), made at the first refine
    labels: object = None  # the last segmentation or refinement (sitk image)
    extra: dict = field(default_factory=dict)


class Worker:
    def __init__(self, device: str = "auto", threads: int | None = None, out: Writer | None = None):
        import torch

        from .infer import pick_device

        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.out = out or Writer()
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, object] = {}
        self.count = 0
        self.cancel = threading.Event()
        self.running = None  # id of the request being worked on

    # ------------------------------------------------------------------ requests
    def model(self, name: str | None):
        from . import store
        from .models.files import load_model

        path = store.resolve(name)
        key = str(path.resolve())
        if key not in self.models:  # loaded once per worker
            self.models[key] = load_model(path)
        return self.models[key]

    def session(self, req: dict) -> Session:
        key = req.get("ct")
        if key not in self.sessions:
            raise ContrastSegError(f"no open CT '{key}' (open it first; open: {sorted(self.sessions) or 'none'})")
        return self.sessions[key]

    def op_open(self, req: dict) -> dict:
        from .io import read_image

        if not req.get("ct"):
            raise ContrastSegError("open needs 'ct': the path of a CT file or DICOM folder")
        image = read_image(req["ct"])
        model = self.model(req.get("model"))
        self.count += 1
        key = f"ct{self.count}"
        self.sessions[key] = Session(image, model, str(req["ct"]))
        return {"ct": key, "size": list(image.GetSize()), "spacing": [round(v, 4) for v in image.GetSpacing()],
                "model": model.card.get("name"), "organs": model.organs}

    def op_segment(self, req: dict, progress: RequestProgress) -> dict:
        from .infer import segment
        from .io import write_labels
        from .outputs import check_outputs

        s = self.session(req)
        output = req.get("output")
        if output:
            check_outputs({"output": output}, [s.path])
        t0 = time.perf_counter()
        result = segment(s.image, s.model, req.get("organs") or None, refined=not req.get("coarse_only"),
                         device=self.device, progress=progress)
        s.labels = result.labels
        if output:
            write_labels(result.labels, output, result.organs)
        timings = {k: round(v, 3) for k, v in result.timings.items()}
        timings["total"] = round(time.perf_counter() - t0, 3)
        return {"ct": req["ct"], "output": output, "organs": result.organs, "timings": timings}

    def op_refine(self, req: dict, progress: RequestProgress) -> dict:
        import numpy as np
        import SimpleITK as sitk

        from .io import read_labels, write_labels
        from .organs import parse_organs
        from .outputs import check_outputs
        from .prompts import Prompts, ras_to_lps, refine_organ, refined_grid

        s = self.session(req)
        try:
            (organ,) = parse_organs(str(req.get("organ") or ""))
        except ValueError as err:
            raise ContrastSegError(str(err)) from None
        if req.get("labels"):
            current = read_labels(req["labels"], s.image)
        elif s.labels is not None:
            current = s.labels
        else:
            raise ContrastSegError("refine needs 'labels' (a label map path) or an earlier segment of this CT")
        if req.get("output"):
            check_outputs({"output": req["output"]}, [s.path] + ([req["labels"]] if req.get("labels") else []))
        box = req.get("box_ras")
        prompts = Prompts(positive=[ras_to_lps(p) for p in req.get("points_ras") or []],
                          negative=[ras_to_lps(p) for p in req.get("neg_points_ras") or []],
                          boxes=[(ras_to_lps(box[:3]), ras_to_lps(box[3:]))] if box else [],
                          use_current=not req.get("ignore_current"))
        progress.begin("refine", f"re-segmenting {req['organ']}")
        t0 = time.perf_counter()
        if s.fine is None:  # kept for the next refinement of this CT
            s.fine = refined_grid(s.image, s.model)
        labels, change = refine_organ(s.image, current, s.model, organ, prompts, self.device, fine=s.fine)
        s.labels = labels
        if req.get("output"):
            write_labels(labels, req["output"], [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v])
        change["seconds"] = round(time.perf_counter() - t0, 3)
        return {"ct": req["ct"], "output": req.get("output"), "change": change}

    def op_close(self, req: dict) -> dict:
        self.session(req)
        del self.sessions[req["ct"]]
        return {"ct": req["ct"], "closed": True}

    # ------------------------------------------------------------------ loop
    def handle(self, req: dict) -> None:
        rid, op = req.get("id"), req.get("op")
        handlers = {"open": self.op_open, "segment": self.op_segment, "refine": self.op_refine, "close": self.op_close}
        if op not in handlers:
            self.out.send({"id": rid, "ok": False, "error": f"unknown op {op!r}; ops: {sorted(handlers) + ['cancel', 'shutdown']}"})
            return
        self.cancel.clear()
        self.running = rid
        try:
            if op in ("segment", "refine"):
                answer = handlers[op](req, RequestProgress(rid, self.out, self.cancel))
            else:
                answer = handlers[op](req)
            self.out.send({"id": rid, "ok": True, **answer})
        except Cancelled:
            self.out.send({"id": rid, "ok": False, "cancelled": True, "error": "cancelled"})
        except ContrastSegError as err:
            self.out.send({"id": rid, "ok": False, "error": str(err)})
        except Exception as err:  # noqa: BLE001 - the worker survives a failed request and says what happened
            self.out.send({"id": rid, "ok": False, "error": f"internal error: {type(err).__name__}: {err}"})
        finally:
            self.running = None


def serve(stdin=None, out: Writer | None = None, device: str = "auto", threads: int | None = None) -> int:
    """Read requests until `shutdown` or end of input. A reader thread takes `cancel` while a request runs."""
    stdin = stdin or sys.stdin
    out = out or Writer()
    worker = Worker(device, threads, out)
    inbox: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as err:
                out.send({"id": None, "ok": False, "error": f"not a JSON request object ({err}): {line.strip()[:80]}"})
                continue
            if req.get("op") == "cancel":
                if req.get("target") is not None and req.get("target") == worker.running:
                    worker.cancel.set()
                    out.send({"id": req.get("id"), "ok": True, "cancelling": req["target"]})
                else:
                    out.send({"id": req.get("id"), "ok": False, "error": f"request {req.get('target')!r} is not running"})
                continue
            inbox.put(req)
            if req.get("op") == "shutdown":
                return
        inbox.put({"op": "shutdown", "id": None})

    threading.Thread(target=read, daemon=True).start()
    out.send({"event": "ready", "protocol": PROTOCOL, "version": __version__, "device": str(worker.device)})
    while True:
        req = inbox.get()
        if req.get("op") == "shutdown":
            out.send({"id": req.get("id"), "ok": True, "shutdown": True})
            return 0
        worker.handle(req)


class Client:
    """Talks to a worker process (`contrastseg serve --stdio`): what the Slicer module and tests use.

    `request(op, **fields)` sends one request and returns its answer; progress events go to `on_event`. A worker
    that dies mid-request raises ContrastSegError with its exit code; `restart()` starts a fresh one (the open
    CTs are gone with the old process and must be opened again).
    """

    def __init__(self, command: list[str] | None = None, env: dict | None = None):
        self.command = command or [sys.executable, "-m", "contrastseg.cli", "serve", "--stdio"]
        self.env = env
        self.proc = None
        self.next_id = 0
        self.ready: dict | None = None

    def start(self) -> "Client":
        import subprocess

        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, env=self.env)
        self.ready = self._read()
        if self.ready.get("protocol") != PROTOCOL:
            raise ContrastSegError(f"the worker speaks {self.ready.get('protocol')!r}, not {PROTOCOL}")
        return self

    def restart(self) -> "Client":
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def send(self, op: str, **fields) -> int:
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "op": op, **fields}) + "\n"
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, AttributeError):
            raise ContrastSegError(self._dead("before it got a request")) from None
        return self.next_id

    def answer(self, rid: int, on_event=None) -> dict:
        while True:
            msg = self._read(rid)
            if msg.get("id") == rid and "ok" in msg:
                return msg
            if on_event is not None:
                on_event(msg)

    def request(self, op: str, on_event=None, **fields) -> dict:
        return self.answer(self.send(op, **fields), on_event)

    def _read(self, rid=None) -> dict:
        line = self.proc.stdout.readline() if self.proc is not None else ""
        if not line:
            raise ContrastSegError(self._dead(f"while answering request {rid}" if rid is not None else "at start"))
        return json.loads(line)

    def _dead(self, when: str) -> str:
        code = self.proc.wait() if self.proc is not None else None
        return f"the ContrastSeg worker stopped {when} (exit code {code}); restart it and open the CT again"
