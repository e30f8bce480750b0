"""Training runs from Slicer: plan, launch detached, follow, cancel, re-attach after a restart, resume.

A run is `contrastseg run start RUN --progress json` started as a detached process (its own session, its
stream in RUN/progress.jsonl), so it survives closing Slicer. The plan is made here, in-process, with the
engine's guard rails (`contrastseg.runs.plan.make_plan`), so a request that cannot work is refused with
its reason before anything starts. `RunMonitor` turns the stream into what the panel shows: stage,
fraction, ETA, the loss curve per stage, the log, and at the end the registered model and its numbers.
The process runner is injected, so tests can use the real `EngineProcess` or a stand-in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ContrastSegLib.process import EngineEvent, EngineProcess, engine_command
from ContrastSegLib.segmentation import SegmentationLogic, slicer_python
from contrastseg.runs.plan import LAUNCH, LOG, STREAM, RunRequest, list_runs, make_plan, preflight, read_state, run_status

STAGE_NAMES = {"pretrain": "pretraining", "coarse": "fine-tuning the coarse network", "refined": "fine-tuning the refined network",
               "finetune": "fine-tuning", "validate": "validating", "register": "registering"}


def engine_env() -> dict:
    """The engine process's extra environment: the ContrastSeg module's (the bundled engine on PYTHONPATH).

    CONTRASTSEG_HOME is inherited: both modules set it for Slicer's process (ContrastSegLib.use_engine_home).
    """
    return SegmentationLogic.engine_env()


@dataclass
class RunMonitor:
    """What the panel shows about one run; `poll()` updates it from the run's stream."""

    run_dir: Path
    process: Any = None
    status: str = "starting"  # starting, running, done, failed, cancelled, interrupted
    stage: str = ""
    fraction: float = 0.0
    eta: float | None = None
    message: str = ""
    error: str | None = None
    model: str | None = None
    validation: dict | None = None
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    on_update: Callable[["RunMonitor"], None] | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return self.process is None and self.status in ("done", "failed", "cancelled", "interrupted")

    def on_event(self, event: EngineEvent) -> None:
        data = event.data
        if event.event == "progress":
            self.status = "running"
            self.stage = data.get("stage") or self.stage
            self.fraction = float(data.get("fraction") or 0.0)
            self.eta = data.get("eta")
            self.message = data.get("message") or self.message
            if data.get("loss") is not None and data.get("step") is not None:
                key = f"{self.stage} {data['phase']}" if data.get("phase") else self.stage  # multi-phase strategies
                curve = self.losses.setdefault(key, [])
                step = int(data["step"])
                while curve and curve[-1][0] >= step:  # a resumed run repeats steps after its checkpoint
                    curve.pop()
                curve.append((step, float(data["loss"])))
        elif event.event == "error":
            self.error = data.get("message")
        elif event.event == "cancelled":  # the status itself comes from the run folder when the process ends
            self.message = data.get("message") or "cancelled"
        elif event.event == "done":
            self.model = data.get("model")
            self.validation = data.get("validation")

    def poll(self) -> bool:
        """Read new events; when the process has ended, take the final status from the run's state."""
        if self.process is not None:
            self.process.poll()
            if not self.process.running():
                self.process.poll()
                self.process = None
                self.refresh()
        if self.on_update:
            self.on_update(self)
        return not self.finished

    def refresh(self) -> None:
        """Take status, model, numbers and error from the run folder (the truth once the process has ended)."""
        status = run_status(self.run_dir)
        state = read_state(self.run_dir)
        self.status = status["status"] if self.process is None else "running"
        self.model = state.get("model") or self.model
        self.validation = state.get("validation") or self.validation
        if self.status in ("failed", "interrupted"):
            self.error = state.get("message") or self.error
            if not self.error and self.process is None:  # it died before saying why: its stderr may
                err = self.run_dir / "progress.stderr.txt"
                lines = err.read_text(errors="replace").splitlines() if err.exists() else []
                lines = [ln for ln in lines if "Error" in ln or "error:" in ln]  # not library warnings
                self.error = lines[-1].strip() if lines else None
        if self.status == "done":
            self.fraction, self.eta = 1.0, None

    def wait(self, timeout: float | None = None, interval: float = 0.2, until: Callable[["RunMonitor"], bool] | None = None) -> "RunMonitor":
        """Poll until the run ends, `until(self)` is true, or `timeout` seconds pass (tests, scripts)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if until is not None and until(self):
                break
            if end is not None and time.monotonic() > end:
                break
            time.sleep(interval)
        return self

    def status_text(self) -> str:
        if self.status == "done":
            return f"Done: model '{self.model}' registered. {validation_text(self.validation)}"
        if self.status in ("failed", "interrupted", "cancelled"):
            what = {"failed": "Failed", "interrupted": "Interrupted (Slicer or the computer stopped it)", "cancelled": "Cancelled"}
            return f"{what[self.status]}{': ' + self.error if self.error and self.status != 'cancelled' else ''}. It can be resumed."
        if not self.stage:
            return "Starting the engine (loading PyTorch)..."
        text = f"{STAGE_NAMES.get(self.stage, self.stage).capitalize()}: {self.fraction * 100:.0f}%"
        if self.eta is not None:
            text += f", about {_duration(self.eta)} left"
        return text

    def log_text(self, max_chars: int = 20000) -> str:
        """The run's log followed by each step's own log (the training steps write theirs)."""
        parts = []
        for path in [self.run_dir / LOG, *sorted((self.run_dir / "steps").glob(f"*/{LOG}"))]:
            if path.exists():
                parts.append(f"--- {path.relative_to(self.run_dir)}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)[-max_chars:]


def validation_text(val: dict | None) -> str:
    """One sentence on the run's numbers; says plainly when no case was held out."""
    corrected = (val or {}).get("corrected") or {}
    trained = f" The table shows the {len(corrected)} corrected case(s) it trained on, before and after." if corrected else ""
    if not val or not val.get("model"):
        return "No case was held out for validation, so there are no numbers on unseen cases." + trained
    new, old = val["model"].get("mean_dice"), val["base"].get("mean_dice")
    return (f"Mean Dice on {len(val.get('entries', []))} held-out case(s): {new} (the model it started from: {old})."
            + trained)


def result_rows(run_dir: Path) -> list[dict]:
    """Before/after per case and organ (contrastseg.runs.validate.organ_table) of a finished run; [] before."""
    from contrastseg.runs.validate import organ_table

    try:
        return organ_table(json.loads((Path(run_dir) / "validation.json").read_text()))
    except (OSError, ValueError):
        return []


def _duration(seconds: float) -> str:
    seconds = max(0, float(seconds))
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class PendingCheck:
    """The checks before a run starts: the plan's verdict, and the GPU check's process while it runs."""

    result: object
    process: object = None
    done: bool = False


class RunLogic:
    """Plans and launches runs and follows them; `runner` is the process class (EngineProcess by default)."""

    def __init__(self, runner=EngineProcess, python: str | None = None):
        self.runner = runner
        self.python = python

    def check(self, request: RunRequest, timeout: float = 300.0):
        """The guard rails' verdict without starting anything (errors, warnings, suggested batch), waited for
        (tests, scripts); the panel uses `start_check` / `check_result`, which never block Slicer."""
        pending = self.start_check(request)
        end = time.monotonic() + timeout
        while self.check_running(pending):
            if time.monotonic() > end:
                pending.process.cancel(wait=False)
                pending.result.errors.append(f"the GPU check gave no answer within {timeout:.0f} s")
                return pending.result
            time.sleep(0.1)
        return self.check_result(pending)

    def start_check(self, request: RunRequest) -> "PendingCheck":
        """Start the checks: the plan's at once, the GPU memory check in an engine process (`contrastseg run
        gpu-check`: Slicer's never imports torch), in its own process group with no console window."""
        result = preflight(request, probe_gpu=False)
        if result.errors or request.device == "cpu":
            return PendingCheck(result, None)
        args = ["run", "gpu-check", "--device", request.device, "--batch", str(request.batch)]
        args += ["--base", str(request.base)] if request.base else []
        args += ["--finetune-args", " ".join(request.finetune_args)] if request.finetune_args else []
        process = EngineProcess(engine_command(*args, python=self.python or slicer_python()), env=engine_env()).start()
        return PendingCheck(result, process)

    @staticmethod
    def check_running(pending: "PendingCheck") -> bool:
        """Read what the GPU check wrote; True while it runs."""
        if pending.process is None:
            return False
        pending.process.poll()
        return pending.process.running()

    @staticmethod
    def check_result(pending: "PendingCheck"):
        """The verdict once the GPU check ended (its last JSON line), or the reason it failed."""
        result, process = pending.result, pending.process
        if process is None or pending.done:
            return result
        pending.done = True
        process.poll()
        answer = next((e.data for e in reversed(process.events) if "suggested_batch" in e.data), None)
        if answer is None:
            why = process.error_message() or f"exit code {process.returncode}"
            result.errors.append(f"the GPU check failed: {why}")
            return result
        result.errors += [answer["error"]] if answer.get("error") else []
        result.warnings += [answer["warning"]] if answer.get("warning") else []
        result.suggested_batch = answer.get("suggested_batch")
        return result

    def launch(self, request: RunRequest, run_dir: Path | None = None, on_update=None) -> RunMonitor:
        """Plan the run (refused with a ContrastSegError if it cannot work) and start it detached."""
        run_dir, _ = make_plan(request, run_dir, probe_gpu=False)
        return self._start(run_dir, on_update)

    def resume(self, run_dir: Path, on_update=None) -> RunMonitor:
        """Start an interrupted, cancelled or failed run again; it continues from its checkpoints."""
        status = run_status(run_dir)
        if status["status"] == "running":
            return self.attach(run_dir, on_update)
        if status["status"] == "done":
            raise ValueError(f"run {status['name']} has finished; there is nothing to resume")
        return self._start(Path(run_dir), on_update)

    def _start(self, run_dir: Path, on_update=None) -> RunMonitor:
        monitor = RunMonitor(Path(run_dir), on_update=on_update)
        command = engine_command("run", "start", str(run_dir), "--progress", "json", python=self.python or slicer_python())
        stream = Path(run_dir) / STREAM
        # a resumed run appends to its stream; reading it from the start redraws the whole loss curve
        process = self.runner(command=command, on_event=monitor.on_event, env=engine_env(), detached=True, stream_file=stream)
        process.start()
        from contrastseg.io import write_json

        write_json({"pid": process.pid, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command},
                   Path(run_dir) / LAUNCH)
        monitor.process, monitor.status = process, "running"
        return monitor

    def attach(self, run_dir: Path, on_update=None) -> RunMonitor:
        """Follow a run started earlier (e.g. before Slicer restarted): its whole stream, then live if running."""
        run_dir = Path(run_dir)
        status = run_status(run_dir)
        monitor = RunMonitor(run_dir, on_update=on_update)
        if status["status"] == "running":
            monitor.process = self.runner.attach(status["pid"], run_dir / STREAM, on_event=monitor.on_event)
            monitor.status = "running"
            monitor.poll()
        else:
            _replay(monitor, run_dir / STREAM)
            monitor.refresh()
        return monitor

    def cancel(self, monitor: RunMonitor, wait: bool = True) -> None:
        """Stop the run's process tree; the run can be resumed later. `wait=False` (the panel) returns at once
        instead of sleeping through the grace period on Slicer's GUI thread: SIGKILL follows from a later poll
        if the run has not stopped by then."""
        if monitor.process is not None:
            monitor.process.cancel(wait=wait)
        monitor.poll()
        if monitor.status == "running":
            monitor.status = "cancelled"

    @staticmethod
    def runs(root: Path | None = None) -> list[dict]:
        """Every run with its status, newest first: running ones to re-attach, interrupted ones to resume."""
        return list_runs(root)


def _replay(monitor: RunMonitor, stream: Path) -> None:
    if not stream.exists():
        return
    for line in stream.read_text(errors="replace").splitlines():
        event = EngineEvent.parse(line)
        if event is not None:
            monitor.on_event(event)


def read_progress(stream: Path) -> list[dict]:
    """All JSON events of a stream file (for tests and reports)."""
    out = []
    for line in stream.read_text(errors="replace").splitlines() if stream.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
