"""Executing a run's plan: each step in turn, one progress stream, resumable, cancellable.

A CLI step runs as a child `contrastseg` process in the run folder; its JSON progress lines are re-emitted
with the run's overall fraction and ETA, so the Slicer module follows one stream whatever the step. Its
`output` events are remembered in state.json: a later step's argument `{pretrain.encoder}` is the path the
pretrain step announced as its "encoder" output. SIGTERM (cancel) stops the child and records "cancelled";
running the plan again resumes.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import ContrastSegError
from ..io import write_json
from ..progress import Progress
from .claim import run_lock  # noqa: F401  (tests import it from here)
from .plan import LOG, STATE, read_plan, read_state


class Cancelled(Exception):
    """The run got SIGTERM or SIGINT (cancel from Slicer or the CLI, Ctrl-C)."""


def log(run_dir: Path, text: str) -> None:
    """One line of the run's log for people. A line that cannot be written (a full disk) is dropped: the
    state and checkpoint writes that matter say so in a sentence, and a log line must not turn it into a
    traceback."""
    try:
        with open(run_dir / LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass


class Runner:
    """Runs one plan; `progress` is the run's own stream (JSON lines when launched by Slicer)."""

    def __init__(self, run_dir: Path, progress: Progress, python: str | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.plan = read_plan(self.run_dir)
        self.state = read_state(self.run_dir)
        self.progress = progress
        self.python = python or sys.executable
        self.child: subprocess.Popen | None = None
        total = sum(s["weight"] for s in self.plan["steps"])
        self.weights = {s["name"]: s["weight"] / total for s in self.plan["steps"]}
        self.t0 = time.perf_counter()
        self.f0 = None  # overall fraction when this process started (for the ETA after a resume)

    def save(self, **changes) -> None:
        self.state.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json(self.state, self.run_dir / STATE)

    def _done_before(self, name: str) -> float:
        total = 0.0
        for s in self.plan["steps"]:
            if s["name"] == name:
                return total
            total += self.weights[s["name"]]
        return total

    def report(self, name: str, stage_fraction: float, message: str = "", force: bool = False, **extra) -> None:
        overall = min(1.0, self._done_before(name) + self.weights[name] * max(0.0, min(1.0, stage_fraction)))
        if self.f0 is None:
            self.f0 = overall
        elapsed = time.perf_counter() - self.t0
        gained = overall - self.f0
        eta = round(elapsed * (1 - overall) / gained, 1) if gained > 0.01 else None
        if self.progress.mode == "json":
            self.progress.emit({"event": "progress", "stage": name, "fraction": round(overall, 4),
                                "stage_fraction": round(stage_fraction, 4), "elapsed": round(elapsed, 2), "eta": eta,
                                "message": message, **extra})
        else:  # the terminal bar, placed at this step's share of the whole run
            self.progress.weights, self.progress.stage = self.weights, name
            self.progress.done_before = self._done_before(name)
            self.progress.update(stage_fraction, message, force=force)

    def _argv(self, step: dict) -> list[str]:
        out = []
        for arg in step["argv"]:
            if arg.startswith("{") and arg.endswith("}"):
                src, kind = arg[1:-1].split(".", 1)
                path = self.state.get("outputs", {}).get(src, {}).get(kind)
                if path is None:
                    raise ContrastSegError(f"step {step['name']} needs the '{kind}' output of step {src}, which it did not announce")
                arg = path
            out.append(arg)
        return out

    def run_cli(self, step: dict) -> None:
        name = step["name"]
        argv = [self.python, "-m", "contrastseg.cli", *self._argv(step)]
        log(self.run_dir, f"step {name}: contrastseg {' '.join(argv[3:])}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.child = subprocess.Popen(argv, cwd=self.run_dir, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
        said: collections.deque = collections.deque(maxlen=20)  # the step's stderr, also in the run's log
        drain = threading.Thread(target=self._drain, args=(self.child.stderr, name, said), daemon=True)
        drain.start()
        error = None
        for line in self.child.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = event.pop("event", "progress")
            if kind == "progress":
                phase = event.pop("stage", None)  # the step's own stage (e.g. a pretraining phase) rides along
                if phase not in (None, "", "train"):
                    event["phase"] = phase
                frac = event.pop("fraction", 0.0)
                for key in ("elapsed", "eta", "stage_fraction"):
                    event.pop(key, None)
                self.report(name, frac, event.pop("message", ""), **event)
            elif kind == "output":
                outputs = self.state.setdefault("outputs", {}).setdefault(name, {})
                outputs[event["kind"]] = str((self.run_dir / event["path"]).resolve())
                self.save()
                self.progress.emit({"event": "output", "stage": name, "kind": event["kind"], "path": outputs[event["kind"]]})
            elif kind == "error":
                error = event.get("message")
        code = self.child.wait()
        drain.join(timeout=10)
        self.child = None
        if code != 0:
            logs = [p for p in (self.run_dir / "progress.stderr.txt", self.run_dir / "steps" / name / "log.txt", self.run_dir / LOG)
                    if p.exists()]
            last = f": {said[-1][-300:]}" if said and not error else ""
            raise ContrastSegError(error or f"step {name} failed (exit code {code}{last})"
                                   f"{'; see ' + ' and '.join(map(str, logs)) if logs else ''}")

    def _drain(self, stream, name: str, said) -> None:
        """A step's stderr goes to the run's log (its error sentence also comes as a JSON event, which the run
        reports once): the terminal shows one sentence, and a traceback of a bug is kept in the log."""
        for line in stream:
            if line.strip():
                said.append(line.rstrip())
                log(self.run_dir, f"{name}: {line.rstrip()}")

    def stop_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()

    def check_gpu(self, completed: set[str]) -> None:
        """The GPU memory check, here in the engine process (a plan made in Slicer's GUI process skips it)."""
        req = self.plan.get("request", {})
        if req.get("device", "auto") == "cpu" or "refined" in completed or \
                not any(s["name"] == "refined" for s in self.plan["steps"]):
            return
        from .base import read_card
        from .plan import gpu_problem

        problem, warning, _ = gpu_problem(req.get("device", "auto"), read_card(Path(self.plan["base"]["path"])),
                                          req.get("finetune_args") or [], int(req.get("batch", 1)))
        if problem:
            raise ContrastSegError(problem)
        if warning:
            log(self.run_dir, f"warning: {warning}")
            self.report("refined", 0.0, f"warning: {warning}", force=True)

    def execute(self) -> dict:
        """Run the steps not yet finished; returns the final state. Raises ContrastSegError or Cancelled."""
        from .snapshot import check_snapshot
        from .validate import register_model, validate

        check_snapshot(self.run_dir, self.plan)
        completed = set(self.state.get("completed", []))
        self.check_gpu(completed)
        self.save(status="running", pid=os.getpid(), started=self.state.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  message=None)
        log(self.run_dir, "resume" if completed else "start")
        for step in self.plan["steps"]:
            name = step["name"]
            if name in completed:
                continue
            self.save(current=name)
            self.report(name, 0.0, f"starting {name}", force=True)
            if step["kind"] == "cli":
                self.run_cli(step)
            elif step["kind"] == "validate":
                result = validate(self.run_dir, self.plan, lambda f, m: self.report(name, f, m))
                self.save(validation={k: v for k, v in result.items() if k != "per_entry"})  # details: validation.json
            elif step["kind"] == "register":
                self.save(model=register_model(self.run_dir, self.plan, self.state))
            else:
                raise ContrastSegError(f"unknown step kind '{step['kind']}' in {self.run_dir}/plan.json")
            completed.add(name)
            self.save(completed=[s["name"] for s in self.plan["steps"] if s["name"] in completed])
            self.report(name, 1.0, f"{name} finished", force=True)
            log(self.run_dir, f"step {name} finished")
        self.save(status="done", current=None)
        log(self.run_dir, f"done: model {self.state.get('model')}")
        return self.state


def _record(runner: Runner, message: str, status: str = "failed") -> None:
    """Record how the run ended in state.json if the disk lets us: on a full disk that write fails too, and
    the error the user sees stays the first one (the run, still marked running by a process now gone, reads
    as interrupted and resumes)."""
    try:
        runner.save(status=status, message=message)
    except (ContrastSegError, OSError):
        pass


def execute(run_dir: Path, progress: Progress) -> dict:
    """Execute (or resume) the plan in `run_dir`, recording failure, cancel and success in state.json."""
    read_plan(run_dir)  # a folder without a plan is refused before a lock file is made in it
    with run_lock(run_dir):
        return _execute(run_dir, progress)


def _execute(run_dir: Path, progress: Progress) -> dict:
    runner = Runner(run_dir, progress)
    if runner.state.get("status") == "done":
        progress.finish(model=runner.state.get("model"), validation=runner.state.get("validation"), already=True)
        return runner.state

    def on_signal(signum, _frame):
        raise Cancelled(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        state = runner.execute()
    except Cancelled:
        runner.stop_child()
        _record(runner, "cancelled; start the run again to resume", status="cancelled")
        log(runner.run_dir, "cancelled")
        progress.emit({"event": "cancelled", "message": "cancelled; start the run again to resume"})
        raise
    except ContrastSegError as err:
        runner.stop_child()
        _record(runner, message=str(err))
        log(runner.run_dir, f"failed: {err}")
        raise
    except BaseException as err:
        runner.stop_child()
        _record(runner, message=f"internal error: {err!r}")
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    progress.finish(model=state.get("model"), validation=state.get("validation"))
    return state
