"""The panel defects found by reading both modules against Slicer 5.6-5.10 (issue 23, item 5), each checked
where it can be without Qt: on real MRML (slicer-core), real processes and real files.

What only Qt can show (the busy cursor, the read-only editor while an update runs, place modes switched off
when the module is left, the two Cancel buttons) is in the widget code, kept to a call each; the Logic those
calls reach is tested here and in test_slicer_interaction.py."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
for _sub in ("ContrastSegTraining", "ContrastSeg"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from ContrastSegLib.install import InstallLogic  # noqa: E402
from ContrastSegLib.process import EngineProcess  # noqa: E402
from contrastseg.errors import ContrastSegError  # noqa: E402
from contrastseg.organs import BY_KEY, ORGANS  # noqa: E402
from contrastseg.serve_client import Client  # noqa: E402
from slicer_app import slicer_app  # noqa: E402,F401

# Keys Slicer 5.6-5.10 gives the slice views (vtkMRMLSliceIntersectionWidget) and the Segment Editor
# (qMRMLSegmentEditorWidget::installKeyboardShortcuts) while the module is shown.
VIEW_KEYS = set("bfgrstvV") | {"Left", "Right", "Up", "Down", "plus", "minus", "Escape", "Delete", "BackSpace"}
EDITOR_KEYS = set("0123456789zyqw/*,.<> ")


def test_the_hint_keys_are_no_views_or_editors():
    from ContrastSegLib.interaction import KEYS

    assert not set(KEYS.values()) & (VIEW_KEYS | EDITOR_KEYS), KEYS


def test_ivc_and_portal_vein_name_the_terminology_list_that_holds_them():
    """Slicer's General Anatomy list (5.6-5.10) has no inferior vena cava nor portal vein: their segments named
    it and matched nothing; the DICOM master list holds both (SNOMED CT 64131007, 32764006)."""
    for key in ("inferior_vena_cava", "portal_splenic_vein"):
        entry = BY_KEY[key].terminology_entry()
        assert entry.startswith("Segmentation category and type - DICOM master list~") and "SCT^" in entry
    for organ in ORGANS:
        if organ.key not in ("inferior_vena_cava", "portal_splenic_vein"):
            assert organ.terminology_entry().startswith("Segmentation category and type - 3D Slicer General Anatomy list~")
        assert len(organ.terminology_entry().split("~")) == 7


def test_a_loaded_label_map_leaves_no_reference_behind(slicer_app, tmp_path):  # noqa: F811
    """CreateOrientedImageDataFromVolumeNode returns a reference the caller owns: without releasing it, every
    loaded result kept a CT-sized image alive."""
    from ContrastSegLib import nodes

    image = sitk.GetImageFromArray(np.ones((4, 5, 6), dtype=np.uint8))
    sitk.WriteImage(image, str(tmp_path / "labels.nrrd"))
    labelmap = nodes.read_labelmap(tmp_path / "labels.nrrd")
    assert labelmap.GetReferenceCount() == 1  # Python's own, and nobody else's
    assert not slicer_app.nodes("vtkMRMLScalarVolumeNode")


def test_the_only_ct_is_preselected_and_a_disabled_segment_button_says_why(slicer_app, tmp_path):  # noqa: F811
    from ContrastSegLib.segmentation import only_volume, segment_blocked

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.int16)), str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.uint8)), str(tmp_path / "lab.nrrd"))
    assert only_volume(slicer_app.scene) is None
    ct = slicer_app.load_volume(tmp_path / "ct.nrrd", "ct")
    slicer_app.load_volume(tmp_path / "lab.nrrd", "labels", labelmap=True)
    assert only_volume(slicer_app.scene) is ct  # a label map is no CT
    slicer_app.load_volume(tmp_path / "ct.nrrd", "another")
    assert only_volume(slicer_app.scene) is None  # two CTs: the user chooses
    assert "Select a CT" in segment_blocked(None, False, False)
    assert "at least one organ" in segment_blocked(ct, True, False)
    assert "running" in segment_blocked(ct, False, True)
    assert segment_blocked(ct, False, False) is None


def test_the_cold_start_says_the_engine_is_starting_not_reading_the_ct():
    from ContrastSegLib.parameter import SegmentSettings
    from ContrastSegLib.segmentation import SegmentationRun

    run = SegmentationRun(None, SegmentSettings(), Path("."), False, organs=[6], state="running", stage="read",
                          fraction=0.0, message="starting the engine")
    assert run.status_text() == "Starting the engine (loading PyTorch)..."
    run.message = "opening the CT"
    assert run.status_text() == "Opening the CT in the engine..."
    run.stage, run.fraction, run.message = "coarse", 0.5, "coarse"
    assert run.status_text().startswith("Coarse segmentation: 50%")


def test_the_install_dialogs_cancel_stops_before_anything_is_installed():
    steps = []
    logic = InstallLogic(version_of=lambda name: "99" if name in ("numpy", "SimpleITK", "vtk") else None)  # Slicer's own only
    cancelled = logic.install(confirm=lambda text: True, on_step=lambda i, n, text: steps.append(text) or False)
    assert cancelled is False and len(steps) == 1  # stopped at the first step: no PyTorch, no pip


def test_a_cancel_returns_at_once_and_the_kill_follows_from_a_later_poll():
    """Cancel busy-waited its 3 s grace period on Slicer's GUI thread; now it returns and a later poll
    sends SIGKILL to a child that ignores SIGTERM."""
    if sys.platform.startswith("win"):
        pytest.skip("process groups and SIGTERM are POSIX")
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('{}', flush=True); time.sleep(60)"
    process = EngineProcess([sys.executable, "-c", stubborn]).start()
    deadline = time.monotonic() + 30
    while not process.events and time.monotonic() < deadline:  # it has set its handler
        process.poll()
        time.sleep(0.05)
    started = time.monotonic()
    process.cancel(grace=0.5, wait=False)
    assert time.monotonic() - started < 0.3 and process.running()
    while process.running() and time.monotonic() - started < 10:
        time.sleep(0.05)
    assert not process.running() and time.monotonic() - started < 5


def test_a_worker_that_writes_bytes_that_are_not_utf8_ends_the_wait_instead_of_stalling():
    """The client decoded with the locale's codec; a decoding error ended its reader thread without marking the
    end, and take() waited for ever. Now the stream is UTF-8 with replacement, and the end is always marked."""
    ready = '{"event": "ready", "protocol": "contrastseg-serve/1", "version": "x"}'
    worker = ("import sys; sys.stdout.buffer.write(b'" + ready.replace("'", "\\'") + "\\n\\xff\\xfe not utf-8\\n'); "
              "sys.stdout.flush(); sys.stdin.readline()")
    client = Client([sys.executable, "-c", worker]).start(timeout=30)
    try:
        rid = client.send("open", ct="x")
        client.proc.stdin.close()  # the fake worker reads one line and exits without answering
        deadline = time.monotonic() + 20
        with pytest.raises(ContrastSegError, match="stopped"):
            while time.monotonic() < deadline:
                client.take(rid)
                time.sleep(0.05)
        assert any("\ufffd" in line for line in client._stderr_tail)  # the bad bytes were read, replaced
    finally:
        client.stop()


def test_a_new_box_clears_the_placed_one_in_the_same_node(slicer_app):  # noqa: F811
    """Drawing a box when one exists made the place widget start a second ROI node, which no update read."""
    import slicer

    from ContrastSegLib.correct import CorrectionLogic
    from ContrastSegLib.interaction import InteractionLogic

    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ContrastSeg box")
    roi.SetCenter(1.0, 2.0, 3.0)
    roi.SetSize(10.0, 10.0, 10.0)
    assert roi.GetNumberOfControlPoints() > 0
    correction = CorrectionLogic(python=sys.executable)
    session = InteractionLogic(correction)
    session.bind(None, None, None, roi)
    session.clear_box()
    assert roi.GetNumberOfControlPoints() == 0 and len(slicer_app.nodes("vtkMRMLMarkupsROINode")) == 1
    correction.cleanup()


def test_the_training_module_loads_on_the_oldest_promised_slicers_python():
    """`Path | None` in annotations Python evaluates stopped ContrastSegTraining.py from loading on Slicer 5.6 /
    5.8 (Python 3.9); the whole check over every file is test_slicer_python.py."""
    code = (REPO / "ContrastSegTraining" / "ContrastSegTraining.py").read_text()
    has_future = "from __future__ import annotations" in code
    assert has_future or not re.search(r"def \w+\([^)]*:\s*\w+ \| None", code)


def test_the_engines_notes_follow_done_into_the_panels_status():
    """A note the engine attaches to a finished segmentation (a scan whose top was repeated, scan_ends.py)
    reaches the run from the engine's own done line and stands after "Done" in the status."""
    from ContrastSegLib.parameter import SegmentSettings
    from ContrastSegLib.process import EngineEvent
    from ContrastSegLib.segmentation import SegmentationLogic, SegmentationRun

    run = SegmentationRun(None, SegmentSettings(), Path("."), False, organs=[6], state="running")
    note = "The scan starts below the diaphragm (no lung at its top): the coarse network saw its top slice repeated 24 mm."
    line = '{"event": "done", "elapsed": 3.0, "timings": {"total": 2.5}, "notes": ["' + note + '"]}'
    SegmentationLogic()._on_event(run, EngineEvent.parse(line))
    assert run.notes == [note] and run.timings == {"total": 2.5}
    run.state = "done"
    assert run.status_text().startswith("Done in ") and run.status_text().endswith(note)
