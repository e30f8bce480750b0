"""The warm engine worker (`contrastseg serve --stdio`): one process that keeps the model, the open CTs and their
refined grids in memory, and answers JSON lines on stdin with JSON lines on stdout.

Protocol `contrastseg-serve/1` (README "The warm worker"). On start the worker says
`{"event": "ready", "protocol": "contrastseg-serve/1", "version": ...}`. Every request is one JSON object
with an `id` (any JSON value, echoed back) and an `op`:

    {"id": 1, "op": "open", "ct": PATH, "model": NAME|null, "key": K|null}   -> {"id": 1, "ok": true, "ct": "ct1", ...}
    {"id": 2, "op": "segment", "ct": "ct1", "output": PATH, "coarse_output": PATH|null, "organs": [..],
     "coarse_only": false}                                       -> progress and output events, then the result
    {"id": 3, "op": "refine", "ct": "ct1", "organ": KEY, "labels": PATH|null (null: the last segmentation),
     "output": PATH, "points_ras": [[x, y, z], ...], "neg_points_ras": [...], "box_ras": [x0,y0,z0,x1,y1,z1]|null,
     "scribble": PATH|null (a mask on the CT's grid: a rough stroke)}
    {"id": 4, "op": "cancel", "target": 2}                                     -> the running request 2 ends "cancelled"
    {"id": 5, "op": "close", "ct": "ct1"}        {"id": 6, "op": "shutdown"}

Answers are `{"id", "ok": true, ...}` or `{"id", "ok": false, "error": "one sentence"}`; progress events are
`{"id", "event": "progress", "stage", "fraction", ...}` as in the CLI's JSON stream. A malformed line gets an
error with `"id": null`. `key` names the open CT (a client that sends open and segment together, without
waiting, needs it); opening under a key in use replaces that CT. `output` events (`{"id", "event": "output",
"kind": "coarse"|"refined", "path"}`) say a file is complete, as in the CLI's stream. Requests run one at a time
in arrival order; `cancel` is read while one runs and also reaches a request still waiting its turn. The worker
stays a separate process, so a crash in torch cannot take Slicer down; the client (serve_client.Client)
restarts it.
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

from .serve_client import PROTOCOL  # noqa: F401  (one definition, shared with the client)


class Cancelled(Exception):
    """The client cancelled the running request."""


class RequestProgress(Progress):
    """The CLI's JSON progress, tagged with the request id; a cancel flag stops the work at the next report."""

    def __init__(self, request_id, out: "Writer", cancel: threading.Event, stages: dict | None = None):
        super().__init__("json", stages or {"refine": 1.0}, stream=None)
        self.request_id, self.out, self.cancel = request_id, out, cancel

    def check(self) -> None:
        """Stop here if the client cancelled (before a file is written, so a cancelled request writes none)."""
        if self.cancel.is_set():
            raise Cancelled()

    def emit(self, record: dict) -> None:
        self.out.send({"id": self.request_id, **record})

    def update(self, fraction: float, message: str = "", force: bool = False, **extra) -> None:
        self.check()
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
        if req.get("key") is not None:
            key = str(req["key"])
            # a CT opened again under its key: the old one goes first (its memory, and no request meant for the
            # new one can run on it if the new one fails to open)
            self.sessions.pop(key, None)
        else:
            self.count += 1
            key = f"ct{self.count}"
        image = read_image(req["ct"])
        model = self.model(req.get("model"))
        self.sessions[key] = Session(image, model, str(req["ct"]))
        return {"ct": key, "size": list(image.GetSize()), "spacing": [round(v, 4) for v in image.GetSpacing()],
                "model": model.card.get("name"), "organs": model.organs}

    def op_segment(self, req: dict, progress: RequestProgress) -> dict:
        """The CLI's `segment` on an open CT: the same checks, stages, outputs and their `output` events."""
        from .ct_checks import check_memory
        from .infer import segment
        from .io import write_labels
        from .outputs import check_outputs

        s = self.session(req)
        output, coarse_output = req.get("output"), req.get("coarse_output")
        refined = not req.get("coarse_only")
        check_outputs({"output": output, "coarse output": coarse_output}, [s.path])
        check_memory(s.image, s.model.card, refined=refined, source=s.path)
        organs = req.get("organs") or None
        if organs is not None:
            from .organs import parse_organs

            try:
                organs = parse_organs(",".join(str(o) for o in organs))
            except ValueError as err:
                raise ContrastSegError(str(err)) from None
        written_organs = organs or s.model.organs

        def on_coarse(labels) -> None:
            if coarse_output:
                progress.check()
                write_labels(labels, coarse_output, written_organs)
                progress.output("coarse", coarse_output)

        t0 = time.perf_counter()
        result = segment(s.image, s.model, organs, refined=refined, device=self.device, progress=progress,
                         on_coarse=on_coarse)
        s.labels = result.labels
        if output:
            progress.begin("write", "writing the label map")
            progress.check()
            write_labels(result.labels, output, result.organs)
            progress.output("refined" if refined else "coarse", output)
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
        inputs = [s.path] + [req[k] for k in ("labels", "scribble") if req.get(k)]
        if req.get("output"):
            check_outputs({"output": req["output"]}, inputs)
        box = req.get("box_ras")
        if box is not None and len(box) != 6:
            raise ContrastSegError(f"box_ras needs 6 numbers (x0, y0, z0, x1, y1, z1), got {len(box)}")
        prompts = Prompts(positive=[ras_to_lps(p) for p in req.get("points_ras") or []],
                          negative=[ras_to_lps(p) for p in req.get("neg_points_ras") or []],
                          boxes=[(ras_to_lps(box[:3]), ras_to_lps(box[3:]))] if box else [],
                          scribble=read_labels(req["scribble"], s.image) if req.get("scribble") else None,
                          use_current=not req.get("ignore_current"))
        progress.begin("refine", f"re-segmenting {req['organ']}")
        t0 = time.perf_counter()
        if s.fine is None:  # kept for the next refinement of this CT
            s.fine = refined_grid(s.image, s.model)
        labels, change = refine_organ(s.image, current, s.model, organ, prompts, self.device, fine=s.fine)
        progress.check()  # cancelled meanwhile: neither the result nor a file
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
        try:
            if op == "segment":
                stages = {"preprocess": 0.1, "coarse": 0.25, "write": 0.05}
                if not req.get("coarse_only"):
                    stages["refine"] = 0.6
                answer = handlers[op](req, RequestProgress(rid, self.out, self.cancel, stages))
            elif op == "refine":
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


def serve(stdin=None, out: Writer | None = None, device: str = "auto", threads: int | None = None) -> int:
    """Read requests until `shutdown` or end of input. A reader thread takes `cancel` at once: the running
    request stops at its next progress report, a waiting one is answered "cancelled" when its turn comes."""
    stdin = stdin or sys.stdin
    out = out or Writer()
    worker = Worker(device, threads, out)
    inbox: queue.Queue = queue.Queue()
    lock = threading.Lock()  # guards which request runs, which wait, which were cancelled while waiting
    waiting: set = set()
    cancelled: set = set()

    def cancel(req: dict) -> None:
        target = req.get("target")
        with lock:
            if target is not None and target == worker.running:
                worker.cancel.set()
            elif target is not None and target in waiting:
                cancelled.add(target)
            else:
                target = None
        if target is None:
            out.send({"id": req.get("id"), "ok": False, "error": f"request {req.get('target')!r} is not running"})
        else:
            out.send({"id": req.get("id"), "ok": True, "cancelling": target})

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
                cancel(req)
                continue
            with lock:
                waiting.add(req.get("id"))
            inbox.put(req)
            if req.get("op") == "shutdown":
                return
        inbox.put({"op": "shutdown", "id": None})

    threading.Thread(target=read, daemon=True).start()
    out.send({"event": "ready", "protocol": PROTOCOL, "version": __version__, "device": str(worker.device)})
    while True:
        req = inbox.get()
        rid = req.get("id")
        with lock:
            waiting.discard(rid)
            skip = rid in cancelled
            cancelled.discard(rid)
            if not skip:
                worker.cancel.clear()
                worker.running = rid
        if skip:
            out.send({"id": rid, "ok": False, "cancelled": True, "error": "cancelled"})
            continue
        if req.get("op") == "shutdown":
            out.send({"id": rid, "ok": True, "shutdown": True})
            return 0
        try:
            worker.handle(req)
        finally:
            with lock:
                worker.running = None
