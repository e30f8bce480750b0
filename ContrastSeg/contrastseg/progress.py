"""Progress reporting for every long job: a terminal bar for people, JSON lines for programs.

The JSON stream (`--progress json`) is the contract with the Slicer modules: one object per line on stdout,
`{"event": "progress", "stage", "fraction", "elapsed", "eta", "message", ...}` while working, `{"event":
"output", "kind", "path"}` when a file is ready (e.g. the coarse result before the refined one), `{"event":
"done", ...}` at the end and `{"event": "error", "message"}` before a non-zero exit.
"""

from __future__ import annotations

import json
import sys
import time


class Progress:
    """Reports stages with weights; `update(fraction)` within a stage gives the overall fraction and an ETA."""

    def __init__(self, mode: str = "bar", stages: dict[str, float] | None = None, stream=None):
        if mode not in ("bar", "json", "none"):
            raise ValueError("progress mode must be bar, json or none")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        total = sum((stages or {"work": 1.0}).values())
        self.weights = {k: v / total for k, v in (stages or {"work": 1.0}).items()}
        self.start = time.perf_counter()
        self.stage = None
        self.done_before = 0.0
        self._last_emit = 0.0
        self._bar_open = False
        self._baseline = None  # (time, overall fraction) of the first report: a resumed run starts part-way

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def begin(self, stage: str, message: str = "") -> None:
        if self.stage is not None:
            self.done_before += self.weights.get(self.stage, 0.0)
        self.stage = stage
        self.update(0.0, message, force=True)

    def update(self, fraction: float, message: str = "", force: bool = False, **extra) -> None:
        """Report progress `fraction` (0-1) of the current stage; rate-limited to ~10 lines per second."""
        now = time.perf_counter()
        if not force and now - self._last_emit < 0.1 and fraction < 1.0:
            return
        self._last_emit = now
        overall = min(1.0, self.done_before + self.weights.get(self.stage, 0.0) * max(0.0, min(1.0, fraction)))
        elapsed = self.elapsed()
        if self._baseline is None and overall > 0:
            self._baseline = (now, overall)
        t_base, f_base = self._baseline or (now, overall)
        gained = overall - f_base
        eta = (now - t_base) * (1 - overall) / gained if gained > 0.01 * (1 - f_base) else None
        if self.mode == "json":
            record = {"event": "progress", "stage": self.stage, "fraction": round(overall, 4),
                      "stage_fraction": round(fraction, 4), "elapsed": round(elapsed, 2),
                      "eta": None if eta is None else round(eta, 1), "message": message}
            record.update(extra)
            self.emit(record)
        elif self.mode == "bar":
            width = 30
            filled = int(round(width * overall))
            eta_s = "--" if eta is None else f"{eta:4.0f}s"
            text = f"\r{self.stage:<10} [{'#' * filled}{'.' * (width - filled)}] {overall * 100:5.1f}% {elapsed:6.1f}s ETA {eta_s} {message[:40]:<40}"
            self.stream.write(text)
            self.stream.flush()
            self._bar_open = True

    def emit(self, record: dict) -> None:
        """Write one JSON record (JSON mode only); other modes ignore machine events."""
        if self.mode == "json":
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()

    def output(self, kind: str, path: str) -> None:
        self.emit({"event": "output", "kind": kind, "path": str(path), "elapsed": round(self.elapsed(), 2)})

    def finish(self, **summary) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False
        self.emit({"event": "done", "elapsed": round(self.elapsed(), 2), **summary})

    def error(self, message: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.emit({"event": "error", "message": message})
