"""The warm engine worker (`contrastseg serve --stdio`): one process that keeps the model, the open CTs and their
refined grids in memory, and answers JSON lines on stdin with JSON lines on stdout.

Protocol `contrastseg-serve/1` (docs/worker.md). On start the worker says
`{"event": "ready", "protocol": "contrastseg-serve/1", "version": ...}`. Every request is one JSON object
with an `id` (any JSON value, echoed back) and an `op`:

    {"id": 1, "op": "open", "ct": PATH, "model": NAME|null, "key": K|null}   -> {"id": 1, "ok": true, "ct": "ct1", ...}
    {"id": 2, "op": "segment", "ct": "ct1", "output": PATH, "coarse_output": PATH|null, "organs": [..],
     "coarse_only": false}                                       -> progress and output events, then the result
    {"id": 3, "op": "refine", "ct": "ct1", "organ": KEY, "labels": PATH|null (null: the last segmentation),
     "output": PATH, "points_ras": [[x, y, z], ...], "neg_points_ras": [...], "box_ras": [x0,y0,z0,x1,y1,z1]|null,
     "scribble": PATH|null (a mask on the CT's grid: a rough stroke), "output_box": false (true: the output holds
     only the box the change's "box" names, and none is written when nothing changed)}
    {"id": 4, "op": "cancel", "target": 2}                                     -> the running request 2 ends "cancelled"
    {"id": 5, "op": "close", "ct": "ct1"}        {"id": 6, "op": "shutdown"}

Answers are `{"id", "ok": true, ...}` or `{"id", "ok": false, "error": "one sentence"}`; progress events are
`{"id", "event": "progress", "stage", "fraction", ...}` as in the CLI's JSON stream. Every line is checked
against its op's schema before anything runs (`serve_requests`: types, required fields, no unknown field); a
bad line gets one sentence naming the field, with its id, or `"id": null` when the id itself is unreadable.
The reader survives any byte sequence (invalid UTF-8, deep nesting, a line of any length). `key` names the open CT (a client that sends open and segment together, without
waiting, needs it); opening under a key in use replaces that CT. `output` events (`{"id", "event": "output",
"kind": "coarse"|"refined", "path"}`) say a file is complete, as in the CLI's stream. Requests run one at a time
in arrival order; `cancel` is read while one runs and also reaches a request still waiting its turn. At the
end of input the requests already read are finished and answered, then the worker exits; if its stdout is
gone (the client died), the running request is cancelled and the worker exits. The worker stays a separate
process, so a crash in torch cannot take Slicer down; the client (serve_client.Client) restarts it.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from . import __version__
from .errors import ContrastSegError
from .progress import Progress

from .serve_client import PROTOCOL  # noqa: F401  (one definition, shared with the client)
from .serve_requests import BadRequest, Request, check_request, parse_line, read_lines


MAX_OPEN_CTS = 8  # each holds its image and refined grid in memory: a client cannot open CTs until it runs out


class Cancelled(Exception):
    """The client cancelled the running request."""


class RequestProgress(Progress):
    """The CLI's JSON progress, tagged with the request id; a cancel flag stops the work at the next report."""

    def __init__(self, request_id, out: "Writer", cancel: threading.Event, stages: dict | None = None):
        super().__init__("json", stages or {"refine": 1.0}, stream=None)
        self.request_id, self.out, self.cancel = request_id, out, cancel

    def check(self) -> None:
        """Stop here if the client cancelled or is gone (before a file is written, so such a request writes none)."""
        if self.cancel.is_set() or self.out.gone:
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
        self.gone = False  # the client closed our stdout: nobody reads the answers any more

    def send(self, record: dict) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                self.stream.write(json.dumps(record) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a broken pipe, or a closed stream
                self.gone = True


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
    # Each op gets `req`: its fields checked and complete (serve_requests.SCHEMA), plus the request's id.
    def model(self, name: str | None):
        from . import store
        from .models.files import load_model

        path = store.resolve(name)
        key = str(path.resolve())
        if key not in self.models:  # loaded once per worker
            self.models[key] = load_model(path)
        return self.models[key]

    def session(self, req: dict) -> Session:
        key = req["ct"]
        if key not in self.sessions:
            raise ContrastSegError(f"no open CT '{key}' (open it first; open: {sorted(self.sessions) or 'none'})")
        return self.sessions[key]

    def op_open(self, req: dict) -> dict:
        from .io import read_ct

        if req["key"] not in self.sessions and len(self.sessions) >= MAX_OPEN_CTS:
            raise ContrastSegError(f"{len(self.sessions)} CTs are open, the most one worker keeps in memory; close one "
                                   f"first (open: {sorted(self.sessions)})")
        if req["key"] is not None:
            key = req["key"]
            # a CT opened again under its key: the old one goes first (its memory, and no request meant for the
            # new one can run on it if the new one fails to open)
            self.sessions.pop(key, None)
        else:
            self.count += 1
            key = f"ct{self.count}"
        image = read_ct(req["ct"])  # the checks `segment` runs: a label map or a [0, 1] image is not a CT
        model = self.model(req["model"])
        self.sessions[key] = Session(image, model, req["ct"])
        return {"ct": key, "size": list(image.GetSize()), "spacing": [round(v, 4) for v in image.GetSpacing()],
                "model": model.card.get("name"), "organs": model.organs}

    def _check_outputs(self, s: Session, outputs: dict, inputs: list) -> None:
        """The CLI's output checks: no output (or its organ table) is an input, a file of the model, or inside
        a model, a dataset or a run; no foreign file is replaced by an organ table; every folder is writable."""
        from .io import check_sidecar, organ_table
        from .models.files import model_files
        from .outputs import check_label_output, check_outputs

        for what, out in outputs.items():
            if out:
                check_label_output(out, what)
        tables = {f"the {what}'s organ table": organ_table(out) for what, out in outputs.items() if out}
        check_outputs({**outputs, **tables}, [s.path, *inputs, *model_files(s.model.folder, s.model.card)])
        for out in outputs.values():
            if out:
                check_sidecar(out)

    def op_segment(self, req: dict, progress: RequestProgress) -> dict:
        """The CLI's `segment` on an open CT: the same checks, stages, outputs and their `output` events."""
        from .ct_checks import check_memory
        from .infer import segment
        from .io import write_labels

        s = self.session(req)
        output, coarse_output = req["output"], req["coarse_output"]
        refined = not req["coarse_only"]
        self._check_outputs(s, {"output": output, "coarse output": coarse_output}, [])
        check_memory(s.image, s.model.card, refined=refined, source=s.path)
        organs = req["organs"]
        if organs is not None:
            s.model.check_covers(organs)
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
        return {"ct": req["ct"], "output": output, "organs": result.organs, "timings": timings, "notes": result.notes}

    def op_refine(self, req: dict, progress: RequestProgress) -> dict:
        import SimpleITK as sitk

        from .io import label_values, read_labels, write_labels
        from .organs import BY_ID
        from .prompts import Prompts, ras_to_lps, refine_organ, refined_grid

        s = self.session(req)
        organ = req["organ"]
        s.model.check_covers([organ])
        inputs = [req["labels"], req["scribble"]]
        if req["output"]:
            self._check_outputs(s, {"output": req["output"]}, inputs)
        if req["labels"]:
            current = read_labels(req["labels"], s.image)
        elif s.labels is not None:
            current = s.labels
        else:
            raise ContrastSegError("refine needs 'labels' (a label map path) or an earlier segment of this CT")
        box = req["box_ras"]
        prompts = Prompts(positive=[ras_to_lps(p) for p in req["points_ras"]],
                          negative=[ras_to_lps(p) for p in req["neg_points_ras"]],
                          boxes=[(ras_to_lps(box[:3]), ras_to_lps(box[3:]))] if box else [],
                          scribble=read_labels(req["scribble"], s.image) if req["scribble"] else None,
                          use_current=not req["ignore_current"])
        progress.begin("refine", f"re-segmenting {BY_ID[organ].key}")
        t0 = time.perf_counter()
        if s.fine is None:  # kept for the next refinement of this CT
            s.fine = refined_grid(s.image, s.model)
        labels, change = refine_organ(s.image, current, s.model, organ, prompts, self.device, fine=s.fine,
                                      check=progress.check)
        progress.check()  # cancelled meanwhile: neither the result nor a file
        s.labels = labels
        if req["output"] and req["output_box"]:  # what changed, not the CT-sized map (a click's reply: 0.3 s less)
            if change["added"] or change["removed"]:
                (z0, z1), (y0, y1), (x0, x1) = change["box"]
                labels = labels[x0:x1, y0:y1, z0:z1]  # keeps its place in the world: the origin moves with it
            else:
                req["output"] = None
        if req["output"]:
            write_labels(labels, req["output"], [v for v in label_values(sitk.GetArrayViewFromImage(labels)) if v])
        change["seconds"] = round(time.perf_counter() - t0, 3)
        return {"ct": req["ct"], "output": req["output"], "change": change}

    def op_close(self, req: dict) -> dict:
        self.session(req)
        del self.sessions[req["ct"]]
        return {"ct": req["ct"], "closed": True}

    # ------------------------------------------------------------------ loop
    def handle(self, request: Request) -> None:
        """Run one checked request and answer it; whatever goes wrong, the worker answers and goes on."""
        rid, op, req = request.id, request.op, request.fields
        try:
            if op == "segment":
                stages = {"preprocess": 0.1, "coarse": 0.25, "write": 0.05}
                if not req["coarse_only"]:
                    stages["refine"] = 0.6
                answer = self.op_segment(req, RequestProgress(rid, self.out, self.cancel, stages))
            elif op == "refine":
                answer = self.op_refine(req, RequestProgress(rid, self.out, self.cancel))
            else:
                answer = {"open": self.op_open, "close": self.op_close}[op](req)
            self.out.send({"id": rid, "ok": True, **answer})
        except Cancelled:
            self.out.send({"id": rid, "ok": False, "cancelled": True, "error": "cancelled"})
        except ContrastSegError as err:
            self.out.send({"id": rid, "ok": False, "error": str(err)})
        except Exception as err:  # noqa: BLE001 - a bug: the worker survives it and says what happened
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

    def cancel(req: Request) -> None:
        target = req.fields["target"]
        with lock:
            if target == worker.running:
                worker.cancel.set()
            elif target in waiting:
                cancelled.add(target)
            else:
                target = None
        if target is None:
            out.send({"id": req.id, "ok": False, "error": f"request {req.fields['target']!r} is not running"})
        else:
            out.send({"id": req.id, "ok": True, "cancelling": target})

    def take(raw: bytes | None) -> bool:
        """One line: checked, then answered (cancel, a bad line) or queued; False after `shutdown`."""
        try:
            req = check_request(parse_line(raw))
        except BadRequest as err:
            out.send({"id": err.rid, "ok": False, "error": str(err)})
            return True
        if req.op == "cancel":
            cancel(req)
            return True
        with lock:
            if req.id is not None:
                waiting.add(req.id)
        inbox.put(req)
        return req.op != "shutdown"

    def read() -> None:
        try:
            for raw in read_lines(stdin):
                try:
                    if not take(raw):
                        return
                except Exception as err:  # noqa: BLE001 - a bug must not leave the worker deaf
                    out.send({"id": None, "ok": False, "error": f"internal error reading a request: "
                                                              f"{type(err).__name__}: {err}"})
        except (OSError, ValueError):  # stdin itself failed: as at its end
            pass
        inbox.put(Request(None, "shutdown", {}))

    threading.Thread(target=read, daemon=True).start()
    out.send({"event": "ready", "protocol": PROTOCOL, "version": __version__, "device": str(worker.device)})
    while not out.gone:
        req = inbox.get()
        with lock:
            waiting.discard(req.id)
            skip = req.id is not None and req.id in cancelled
            cancelled.discard(req.id)
            if not skip:
                worker.cancel.clear()
                worker.running = req.id
        if skip:
            out.send({"id": req.id, "ok": False, "cancelled": True, "error": "cancelled"})
            continue
        if req.op == "shutdown":
            out.send({"id": req.id, "ok": True, "shutdown": True})
            return 0
        try:
            worker.handle(req)
        finally:
            with lock:
                worker.running = None
    _quiet(out.stream)  # the client is gone
    return 0


def _quiet(stream) -> None:
    """Point a stream whose reader is gone at the null device, so what is left in its buffer is dropped at
    exit instead of raising BrokenPipeError (a traceback on stderr, for nobody)."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
