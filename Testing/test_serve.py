"""The warm worker's protocol on real CT (`contrastseg serve --stdio` in its own process): open, segment with
progress, refine one organ, cancel, close, a malformed line, a closed CT, a worker killed mid-request."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.dataset import NAMED_ID_MAPS
from contrastseg.errors import ContrastSegError
from contrastseg.io import read_image, read_labels
from contrastseg.serve_client import PROTOCOL, Client
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
    assert seg["notes"] == []  # its top shows the lungs: run as it is (scan_ends.py)
    assert events and {e["event"] for e in events} == {"progress", "output"}
    assert {e["stage"] for e in events if e["event"] == "progress"} >= {"coarse", "refine", "write"}
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert (first == 6).sum() > 1000  # the liver
    fixed = client.request("refine", ct=opened["ct"], organ="right_kidney", points_ras=[_kidney_point_ras()],
                           output=str(tmp_path / "fixed.nii.gz"))
    assert fixed["ok"], fixed
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")))
    kept = (first != 2) & (first != 0)
    assert np.array_equal(after[kept], first[kept]) and (after == 2).sum() > 0  # only the kidney changed
    assert fixed["change"]["organ"] == "right_kidney"
    # the kidney missed: the click brings it back; with output_box only the box that changed comes back, in
    # its place on the CT's grid
    missed = sitk.GetImageFromArray(np.where(first == 2, 0, first).astype(np.uint8))
    missed.CopyInformation(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    sitk.WriteImage(missed, str(tmp_path / "missed.nii"))
    answers, outputs = [], {}
    for name, boxed in (("whole.nii", False), ("box.nii", True)):
        answers.append(client.request("refine", ct=opened["ct"], organ="right_kidney", points_ras=[_kidney_point_ras()],
                                      labels=str(tmp_path / "missed.nii"), output=str(tmp_path / name), output_box=boxed))
        assert answers[-1]["ok"], answers[-1]
        outputs[name] = sitk.ReadImage(str(tmp_path / name))
    change = answers[1]["change"]
    assert change["added"] > 1000 and {**change, "seconds": 0} == {**answers[0]["change"], "seconds": 0}
    whole = sitk.GetArrayFromImage(outputs["whole.nii"])
    box = tuple(slice(a, b) for a, b in change["box"])
    crop = outputs["box.nii"]
    assert 0 < crop.GetNumberOfPixels() < whole.size
    assert np.array_equal(sitk.GetArrayFromImage(crop), whole[box])
    assert np.allclose(crop.GetOrigin(), read_image(CT).TransformIndexToPhysicalPoint([s.start for s in box][::-1]))
    outside = np.ones(whole.shape, bool)
    outside[box] = False
    assert np.array_equal(whole[outside], sitk.GetArrayFromImage(missed)[outside])  # nothing changed outside it
    # a click that changes nothing writes nothing
    again = client.request("refine", ct=opened["ct"], organ="right_kidney", points_ras=[_kidney_point_ras()],
                           output=str(tmp_path / "none.nii"), output_box=True)
    assert again["ok"] and again["change"]["added"] == again["change"]["removed"] == 0, again
    assert again["output"] is None and not (tmp_path / "none.nii").exists()
    assert client.request("close", ct=opened["ct"])["ok"]
    gone = client.request("segment", ct=opened["ct"])
    assert not gone["ok"] and "no open CT" in gone["error"]
    assert client.proc.poll() is None  # a failed request leaves the worker serving


def test_malformed_lines_and_unknown_ops_get_an_error_and_the_worker_goes_on(client):
    client.send_line("{not json")
    bad = client.answer(None, timeout=60)
    assert bad["id"] is None and bad["ok"] is False and "not a JSON request" in bad["error"]
    assert "unknown op" in client.request("segmentt")["error"]
    assert "open needs 'ct'" in client.request("open")["error"]
    assert client.request("open", ct=str(CT))["ok"]


def _first_message(client, rid, timeout=120):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = client.take(rid)
        if got:
            return got[0]
        time.sleep(0.02)
    raise AssertionError(f"no message for request {rid}")


def test_cancel_stops_the_running_request_and_one_still_waiting(client, tmp_path):
    ct = client.request("open", ct=str(TS / "example_ct.nii.gz"))["ct"]
    rid = client.send("segment", ct=ct, coarse_output=str(tmp_path / "coarse.nii.gz"), output=str(tmp_path / "seg.nii.gz"))
    waiting = client.send("segment", ct=ct, output=str(tmp_path / "second.nii.gz"))  # queued behind the first
    first = _first_message(client, rid)
    assert first["id"] == rid and first["event"] == "progress"
    cancels = [client.send("cancel", target=t) for t in (rid, waiting)]
    assert all(client.answer(c, timeout=60)["ok"] for c in cancels)
    assert client.answer(rid, timeout=300)["cancelled"] is True
    assert client.answer(waiting, timeout=60)["cancelled"] is True
    assert not any(tmp_path.glob("*.nii.gz"))  # a cancelled request writes no file
    assert "is not running" in client.request("cancel", target=rid)["error"]
    assert not client.busy
    done = client.request("segment", ct=ct, coarse_only=True)  # the CT stays open after a cancel
    assert done["ok"] and done["organs"]


def test_open_under_a_key_and_segment_without_waiting_for_it(client, tmp_path):
    """What the Slicer module does: open and segment sent together; events name the files as they are ready."""
    opened = client.send("open", ct=str(CT), key="vtkMRMLScalarVolumeNode1")
    rid = client.send("segment", ct="vtkMRMLScalarVolumeNode1", output=str(tmp_path / "seg.nii"),
                      coarse_output=str(tmp_path / "coarse.nii"), organs=["liver", "spleen"])
    assert client.answer(opened)["ct"] == "vtkMRMLScalarVolumeNode1"
    events = []
    answer = client.answer(rid, on_event=events.append)
    assert answer["ok"] and answer["organs"] == [1, 6], answer
    outputs = [(e["kind"], e["path"]) for e in events if e["event"] == "output"]
    assert outputs == [("coarse", str(tmp_path / "coarse.nii")), ("refined", str(tmp_path / "seg.nii"))]
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages.index("coarse") < stages.index("refine") < stages.index("write")
    assert [e["fraction"] for e in events if e["event"] == "progress"] == sorted(e["fraction"] for e in events if e["event"] == "progress")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii")))
    assert set(np.unique(seg)) <= {0, 1, 6} and (seg == 6).sum() > 1000
    # the key in use: opening again replaces the CT, and the last segmentation with it
    assert client.request("open", ct=str(CT), key="vtkMRMLScalarVolumeNode1")["ok"]
    gone = client.request("refine", ct="vtkMRMLScalarVolumeNode1", organ="liver", points_ras=[_kidney_point_ras()])
    assert not gone["ok"] and "earlier segment" in gone["error"]


def test_a_worker_killed_mid_request_is_a_clear_error_and_restarts(client):
    ct = client.request("open", ct=str(TS / "example_ct.nii.gz"))["ct"]
    rid = client.send("segment", ct=ct)
    assert _first_message(client, rid)["id"] == rid  # it is working
    os.kill(client.proc.pid, signal.SIGKILL)  # a crash in torch
    with pytest.raises(ContrastSegError, match=r"worker stopped while answering request \d+ \(exit code -9\); restart it"):
        client.answer(rid)
    with pytest.raises(ContrastSegError, match="worker stopped"):
        client.take(rid)
    client.restart()
    assert client.request("open", ct=str(CT))["ok"]
