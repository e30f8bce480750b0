"""The warm worker's protocol on real CT (`contrastseg serve --stdio` in its own process): open, segment with
progress, refine one organ, cancel, close, a malformed line, a closed CT, a worker killed mid-request."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.dataset import NAMED_ID_MAPS
from contrastseg.errors import ContrastSegError
from contrastseg.io import read_image, read_labels
from contrastseg.serve import PROTOCOL, Client
from realdata import TS, needs_data, needs_default_model

pytestmark = [needs_data, needs_default_model()]
CT = TS / "example_ct_sm.nii.gz"


@pytest.fixture
def client(tmp_path):
    env = dict(os.environ, CONTRASTSEG_HOME=str(tmp_path / "home"))
    c = Client(env=env)
    c.command += ["--threads", "2"]
    yield c.start()
    c.stop()


def _kidney_point_ras() -> list[float]:
    image = read_image(CT)
    labels = sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", image, NAMED_ID_MAPS["totalsegmentator"]))
    z, y, x = np.argwhere(labels == 2).mean(0).round().astype(int)
    lps = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
    return [-lps[0], -lps[1], lps[2]]


def test_open_segment_refine_close(client, tmp_path):
    assert client.ready["protocol"] == PROTOCOL and client.ready["version"]
    opened = client.request("open", ct=str(CT))
    assert opened["ok"] and opened["size"] == list(read_image(CT).GetSize()) and 2 in opened["organs"]
    events = []
    seg = client.request("segment", ct=opened["ct"], output=str(tmp_path / "seg.nii.gz"), on_event=events.append)
    assert seg["ok"], seg
    assert events and all(e["event"] == "progress" for e in events) and {e["stage"] for e in events} >= {"coarse", "refine"}
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert (first == 6).sum() > 1000  # the liver
    fixed = client.request("refine", ct=opened["ct"], organ="right_kidney", points_ras=[_kidney_point_ras()],
                           output=str(tmp_path / "fixed.nii.gz"))
    assert fixed["ok"], fixed
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")))
    kept = (first != 2) & (first != 0)
    assert np.array_equal(after[kept], first[kept]) and (after == 2).sum() > 0  # only the kidney changed
    assert fixed["change"]["organ"] == "right_kidney"
    assert client.request("close", ct=opened["ct"])["ok"]
    gone = client.request("segment", ct=opened["ct"])
    assert not gone["ok"] and "no open CT" in gone["error"]
    assert client.proc.poll() is None  # a failed request leaves the worker serving


def test_malformed_lines_and_unknown_ops_get_an_error_and_the_worker_goes_on(client):
    client.proc.stdin.write("{not json\n")
    client.proc.stdin.flush()
    bad = json.loads(client.proc.stdout.readline())
    assert bad["id"] is None and bad["ok"] is False and "not a JSON request" in bad["error"]
    assert "unknown op" in client.request("segmentt")["error"]
    assert "open needs 'ct'" in client.request("open")["error"]
    assert client.request("open", ct=str(CT))["ok"]


def test_cancel_stops_the_running_request(client):
    ct = client.request("open", ct=str(TS / "example_ct.nii.gz"))["ct"]
    rid = client.send("segment", ct=ct)
    first = json.loads(client.proc.stdout.readline())
    assert first["id"] == rid and first["event"] == "progress"
    cancel_id = client.send("cancel", target=rid)
    answers = {}
    while rid not in answers or cancel_id not in answers:
        msg = json.loads(client.proc.stdout.readline())
        if "ok" in msg:
            answers[msg["id"]] = msg
    assert answers[cancel_id]["ok"] and answers[rid]["cancelled"] is True
    assert client.request("segment", ct=ct, coarse_only=True)["ok"]  # the CT stays open after a cancel


def test_a_worker_killed_mid_request_is_a_clear_error_and_restarts(client):
    ct = client.request("open", ct=str(TS / "example_ct.nii.gz"))["ct"]
    rid = client.send("segment", ct=ct)
    assert json.loads(client.proc.stdout.readline())["id"] == rid  # it is working
    os.kill(client.proc.pid, signal.SIGKILL)  # a crash in torch
    with pytest.raises(ContrastSegError, match=r"worker stopped while answering request \d+ \(exit code -9\); restart it"):
        client.answer(rid)
    client.restart()
    assert client.request("open", ct=str(CT))["ok"]
