"""The Slicer modules' process runner (ContrastSegLib.process) on real child processes: every line of a
long stream arrives, also the last one without a newline and a character split across reads; stderr's
last line is the error; a zombie is not running. Reader threads, not non-blocking pipes (none on Windows)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "ContrastSeg") not in sys.path:
    sys.path.insert(0, str(REPO / "ContrastSeg"))

from ContrastSegLib.process import EngineProcess, pid_alive  # noqa: E402
from contrastseg.processes import process_alive  # noqa: E402

CHILD = r"""
import json, sys, time
for i in range(3000):
    print(json.dumps({"event": "progress", "fraction": i / 3000, "message": "organ \u00e9\u00e9 " + "x" * 200}))
    if i % 500 == 0:
        sys.stdout.flush(); time.sleep(0.05)
sys.stdout.buffer.write(b'{"event": "done", "message": "f\xc3'); sys.stdout.flush(); time.sleep(0.2)
sys.stdout.buffer.write(b'\xa9"}'); sys.stdout.flush()
print("warming up\nthe engine says: the CT is not CT", file=sys.stderr)
sys.exit(3)
"""


def test_every_line_arrives_and_stderr_gives_the_error():
    seen = []
    proc = EngineProcess([sys.executable, "-c", CHILD], on_event=seen.append).start()
    assert proc.wait(timeout=60) == 3
    assert len(seen) == 3001 and seen[-1].event == "done" and seen[-1].data["message"] == "f\u00e9"
    assert all(e.data["message"].startswith("organ \u00e9\u00e9") for e in seen[:-1])
    assert proc.error_message() == "the engine says: the CT is not CT"


def test_cancel_ends_the_whole_tree():
    grandchild = ("import json, subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                  "print(json.dumps({'event': 'progress', 'pid': g.pid}), flush=True); time.sleep(60)")
    proc = EngineProcess([sys.executable, "-c", grandchild]).start()
    end = time.monotonic() + 30
    while not proc.events and time.monotonic() < end:
        proc.poll()
        time.sleep(0.05)
    assert proc.events and proc.running()
    worker = proc.events[0].data["pid"]
    assert process_alive(worker)
    proc.cancel(grace=1.0)
    assert not proc.running() and proc.cancelled
    end = time.monotonic() + 10
    while process_alive(worker) and time.monotonic() < end:  # its parent's init reaps it
        time.sleep(0.05)
    assert not process_alive(worker), "the engine's own child outlived the cancel"


def test_a_zombie_or_ended_process_is_not_running():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    assert pid_alive(child.pid) and process_alive(child.pid)
    time.sleep(1.0)  # ended, not yet reaped by us: a zombie that still answers kill(pid, 0)
    assert not pid_alive(child.pid) and not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid) and not pid_alive(None)
