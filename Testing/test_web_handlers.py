"""The web app's handlers on real MRML, without a browser: uploads checked like any CT (the CLI's sentences),
paths confined to --data-dir, the organ list, clear / undo / redo, the label map download and the dataset entry
with its provenance. The scene is trame-slicer's own (SlicerApp), the Logic classes the Slicer modules'.

Skipped, with the reason, where the [web] extra (trame-slicer, slicer-core 5.11) is not installed. The real
engine (Segment, a click) runs in the browser tests (test_web_browser.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.errors import ContrastSegError
from realdata import DATA, TS, needs_data

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e \".[web]\"): "
                                           "the web handlers run on trame-slicer's scene")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData" / "contrastseg-sample-ct.nii.gz"
TS_LABELS = REPO / "Resources" / "Replay" / "ts-example-ct-labels.nii.gz"  # TotalSegmentator ids, the sample's grid

pytestmark = needs_data


@pytest.fixture(scope="module")
def slicer_app():
    """One trame-slicer app per module: its editor registers a pipeline creator in a process-wide factory."""
    import slicer
    from trame_slicer.core import SlicerApp

    saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules")}
    app = SlicerApp()
    yield app
    for k, value in saved.items():
        if value is None:
            if hasattr(slicer, k):
                delattr(slicer, k)
        else:
            setattr(slicer, k, value)


@pytest.fixture
def session(slicer_app, tmp_path, monkeypatch):
    from contrastseg_web.session import WebSession

    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    (data / "cts").mkdir(parents=True)
    shutil.copy(SAMPLE, data / "cts" / "sample.nii.gz")
    (tmp_path / "private.nii.gz").write_bytes(SAMPLE.read_bytes())
    (data / "leak.nii.gz").symlink_to(tmp_path / "private.nii.gz")
    s = WebSession(slicer_app, data_dir=data, max_upload_mb=50, threads=2)
    yield s
    s.clear()
    s.shutdown()


def volumes(session) -> int:
    return session.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")


def cli_sentence(path: Path) -> str:
    """The CLI's sentence for a file, without its path (the upload is read from a temporary copy)."""
    from contrastseg.io import read_ct

    with pytest.raises(ContrastSegError) as err:
        read_ct(path)
    return str(err.value).replace(str(path), "").strip()


# ------------------------------------------------------------------------------------------ uploads
def test_a_label_map_uploaded_as_the_ct_is_refused_with_the_clis_sentence(session):
    labels = TS / "example_seg.nii.gz"
    with pytest.raises(ContrastSegError) as err:
        session.load_upload("example_seg.nii.gz", None, labels.read_bytes())
    assert cli_sentence(labels).startswith("does not look like CT in Hounsfield units")
    assert str(err.value) == "upload example_seg.nii.gz " + cli_sentence(labels)  # no server path in the page
    assert volumes(session) == 0 and session.volume is None
    assert not any(session.work.iterdir()), "the refused upload was left on disk"


def test_truncated_oversized_and_foreign_uploads_are_refused(session, tmp_path):
    data = SAMPLE.read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ContrastSegError, match="truncated or corrupt"):
        session.load_upload("cut.nii.gz", None, truncated.read_bytes())
    session.max_upload_mb = 0.5
    with pytest.raises(ContrastSegError, match="at most 0 MB|at most 1 MB"):
        session.load_upload("big.nii.gz", len(data), data)
    session.max_upload_mb = 50
    with pytest.raises(ContrastSegError, match="not a CT file the app reads"):
        session.load_upload("notes.txt", 5, b"hello")
    with pytest.raises(ContrastSegError, match="not a readable zip"):
        session.load_upload("series.zip", 5, b"hello")
    assert volumes(session) == 0


def test_an_uploaded_nifti_and_a_zipped_dicom_series_load_as_the_engine_reads_them(session, tmp_path):
    message = session.load_upload("../../evil name.nii.gz", None, SAMPLE.read_bytes())
    assert message == "Loaded upload evil_name.nii.gz (122x101x112 voxels)."
    assert session.volume.GetImageData().GetDimensions() == (122, 101, 112)
    archive = tmp_path / "dicom.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((TS / "example_ct_dicom").iterdir()):
            z.write(f, f"patient/series/{f.name}")
    message = session.load_upload("dicom.zip", None, archive.read_bytes())
    assert message == "Loaded upload dicom.zip (512x512x20 voxels)."
    assert volumes(session) == 1, "the previous CT stays in the scene"
    engine = sitk.GetArrayFromImage(sitk.ReadImage(sorted((TS / "example_ct_dicom").glob("*"))[0]))
    import slicer

    shown = slicer.util.arrayFromVolume(session.volume)
    assert shown.shape == (20, 512, 512) and np.isin(engine.ravel()[:1000], shown).all()


# ------------------------------------------------------------------------------------------ paths
def test_only_files_under_the_data_folder_can_be_opened(session, tmp_path):
    assert session.data_files() == ["cts/sample.nii.gz"]  # the link leading out is not offered
    for bad in ["../private.nii.gz", str(tmp_path / "private.nii.gz"), "leak.nii.gz", "cts/../../private.nii.gz"]:
        with pytest.raises(ContrastSegError, match="outside the allowed folder"):
            session.load_data_file(bad)
    assert volumes(session) == 0
    assert session.load_data_file("cts/sample.nii.gz").startswith("Loaded --data-dir file cts/sample.nii.gz")
    session.data_dir = None
    with pytest.raises(ContrastSegError, match="--data-dir"):
        session.load_data_file("cts/sample.nii.gz")


# ------------------------------------------------------------------------------------------ organs, edits, save
@pytest.fixture
def segmented(session, tmp_path):
    """The sample CT with TotalSegmentator's labels (mapped to BTCV ids) as its segmentation, as Segment leaves
    it: organ segments, the source CT and model recorded, the initial label map kept."""
    from ContrastSegLib import nodes
    from ContrastSegLib.segmentation import INITIAL_LABELS_ATTRIBUTE
    from contrastseg.io import read_ct, read_labels, write_labels
    from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV

    session.load_sample()
    labels = read_labels(TS_LABELS, read_ct(SAMPLE), TOTALSEGMENTATOR_TO_BTCV)
    path = tmp_path / "initial.nii.gz"
    organs = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v)
    write_labels(labels, path, organs)
    node = nodes.load_labels(path, session.volume, organs, name="sample segmentation")
    node.SetAttribute("ContrastSeg.SourceVolume", session.volume.GetID())
    node.SetAttribute("ContrastSeg.Model", "default")
    node.SetAttribute(INITIAL_LABELS_ATTRIBUTE, str(path))
    session._activate(node)
    return session, sitk.GetArrayFromImage(labels)


def test_rows_name_every_organ_with_its_colour_snomed_code_and_voxels(segmented):
    session, labels = segmented
    rows = {r["key"]: r for r in session.rows()}
    kidney = rows["right_kidney"]
    assert (kidney["name"], kidney["snomed"], kidney["modifier"], kidney["color"]) == \
        ("right kidney", "SCT 64033007", "Right", "#b96653")
    assert kidney["voxels"] == int((labels == 2).sum()) > 1000
    assert rows["liver"]["snomed"] == "SCT 10200004" and rows["liver"]["voxels"] == int((labels == 6).sum())
    session.set_visible("liver", False)
    assert session.segmentation.GetDisplayNode().GetSegmentVisibility("liver") == 0
    assert [r["visible"] for r in session.rows(["liver", "spleen"])] == [True, False] or \
        {r["key"]: r["visible"] for r in session.rows(["liver", "spleen"])} == {"liver": False, "spleen": True}
    with pytest.raises(ContrastSegError, match="no segment 'pancreas_head'"):
        session.set_visible("pancreas_head", True)


def test_selecting_an_organ_centres_the_slice_views_on_it(segmented):
    import slicer

    session, _ = segmented
    red = slicer.vtkMRMLSliceNode()  # the app's views make these; this scene has no views
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    session.scene.AddNode(red)
    centre = session.organ_centre("right_kidney")
    session.select("right_kidney")
    assert session.editor.get_active_segment_id() == "right_kidney"
    origin = [red.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    assert np.allclose(origin, centre, atol=1e-3)


def test_clear_undo_redo_and_the_downloaded_label_map(segmented):
    from contrastseg_web.edits import Corrector

    session, labels = segmented
    corrector = Corrector(session)
    assert corrector.clear("right_kidney") == int((labels == 2).sum())
    assert session.rows(["right_kidney"])[0]["voxels"] == 0
    assert session.undo() and session.rows(["right_kidney"])[0]["voxels"] == int((labels == 2).sum())
    assert session.redo() and session.rows(["right_kidney"])[0]["voxels"] == 0
    assert not session.redo(), "nothing left to redo"
    name, data = session.label_file()
    assert re.fullmatch(r"sample_CT(_\d+)?-labels\.nii\.gz", name), name  # the scene numbers a reused name
    path = session.work / "check.nii.gz"
    path.write_bytes(data)
    downloaded = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    expected = np.where(labels == 2, 0, labels)
    assert np.array_equal(downloaded, expected)
    with pytest.raises(ContrastSegError, match="select the organ"):
        corrector.clear("")


def test_a_click_brings_a_cleared_kidney_back_through_the_worker_and_undo_takes_it_away(segmented):
    """The real engine (default model, 2 threads): the same prompted refinement as Slicer's Correct section."""
    from contrastseg_web.edits import Corrector

    session, labels = segmented
    corrector = Corrector(session)
    centre = session.organ_centre("right_kidney")
    corrector.clear("right_kidney")
    session.show_3d(True)
    assert session.editor.is_3d_shown()
    from contrastseg_web.surfaces import SURFACE

    seg = session.segmentation.GetSegmentation()
    surfaces = {seg.GetNthSegmentID(i): seg.GetNthSegment(i).GetRepresentation(SURFACE) for i in range(seg.GetNumberOfSegments())}
    change = corrector.click("right_kidney", centre)
    # the organs were written with the surfaces off (in place in their layer); they come back on settling: the
    # same surfaces for the organs the click left alone, a new one for the kidney
    assert corrector.surfaces.off and not session.editor.is_3d_shown()
    steps = corrector.surfaces.settling(show_3d=True)
    assert next(steps) == "right_kidney"  # about to build it, an edit comes (an undo, and its redo), then settles
    assert session.undo() and session.redo()
    corrector.surfaces.settle(show_3d=True)
    assert session.editor.is_3d_shown() and not corrector.surfaces.off
    for key, surface in surfaces.items():  # the organs the kidney took voxels from keep theirs for now too
        now = seg.GetSegment(key).GetRepresentation(SURFACE)
        assert (now is surface) == (key != "right_kidney"), key
    assert seg.GetSegment("right_kidney").GetRepresentation(SURFACE).GetNumberOfPoints() > 100
    assert change["taken"] and corrector.surfaces.stale == set(change["taken"])
    refreshed = list(corrector.surfaces.refreshing())  # once the edits pause: those organs' surfaces built anew
    assert set(refreshed) == set(change["taken"]) and not corrector.surfaces.stale
    for key, surface in surfaces.items():
        now = seg.GetSegment(key).GetRepresentation(SURFACE)
        assert (now is surface) == (key not in {"right_kidney", *change["taken"]}), key
        assert now.GetNumberOfPoints() > 0 or key == "right_kidney"
    kidney = labels == 2
    import slicer

    from ContrastSegLib.correct import edits

    back = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation, "right_kidney", session.volume) > 0
    dice = 2 * (back & kidney).sum() / (back.sum() + kidney.sum())
    assert change["added"] == int(back.sum()) > 0 and dice > 0.6, (change, dice)
    # the page lists the worker's count for the clicked organ without counting it again: it is the node's
    assert change["voxels_after"] == session.rows(["right_kidney"])[0]["voxels"] == int(back.sum())
    liver = session.rows(["liver"])[0]["voxels"]  # other organs can only lose what the kidney took from them
    assert int((labels == 6).sum()) - change["added"] <= liver <= int((labels == 6).sum())
    assert liver == int((labels == 6).sum()) - change.get("taken", {}).get("liver", 0)
    (record,) = edits(session.segmentation)
    assert record["added"] == change["added"]
    assert session.undo() and session.rows(["right_kidney"])[0]["voxels"] == 0
    assert edits(session.segmentation) == []  # the record goes with the voxels
    assert session.rows(["liver"])[0]["voxels"] == int((labels == 6).sum())  # what the kidney took, given back
    assert session.redo() and session.rows(["right_kidney"])[0]["voxels"] == int(back.sum())
    assert edits(session.segmentation) == [record]
    after = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation, "right_kidney", session.volume) > 0
    assert np.array_equal(after, back)
    assert session.undo() and session.undo(), "the click, then the clear"
    assert np.array_equal(session.nodes.labelmap_array(session.segmentation, session.volume), labels)


def test_add_to_dataset_records_the_corrected_organs_model_and_source(segmented):
    from contrastseg_web.edits import Corrector

    session, labels = segmented
    Corrector(session).clear("right_kidney")
    message = session.add_to_dataset()
    assert message.endswith("Corrected: right_kidney.")
    manifest = json.loads((Path(os.environ["CONTRASTSEG_HOME"]) / "dataset" / "manifest.json").read_text())
    (entry,) = manifest["entries"]
    prov = entry["provenance"]
    assert prov["edited"] == {"right_kidney": {"id": 2, "added": 0, "removed": int((labels == 2).sum())}}
    assert prov["model"] if "model" in prov else entry.get("model") == "default"
    assert prov["note"] == "contrastseg web: the sample CT"
    assert entry["initial"], "the initial segmentation is kept with the entry"


def test_handlers_refuse_with_a_sentence_before_a_ct_or_a_segmentation_exists(session):
    from contrastseg_web.training import Training

    for call, pattern in ((session.start_segment, "load a CT first"), (session.label_file, "segment the CT first"),
                          (session.add_to_dataset, "segment the CT first"), (lambda: session.select("liver"), "segment")):
        with pytest.raises(ContrastSegError, match=pattern):
            call()
    with pytest.raises(ContrastSegError, match="cannot start training"):
        Training(session).start()  # an empty local dataset: the engine's guard rails say why


def test_loss_curve_points_fit_the_box():
    from contrastseg_web.training import loss_polylines, loss_svg

    curves = loss_polylines({"coarse": [(0, 2.0), (10, 1.0)], "refined": [(0, 1.5), (20, 0.5)]}, 300, 120)
    xs = [float(p.split(",")[0]) for c in curves for p in c["points"].split()]
    ys = [float(p.split(",")[1]) for c in curves for p in c["points"].split()]
    assert min(xs) == 2.0 and max(xs) == 298.0 and min(ys) == 2.0 and max(ys) == 118.0
    assert [c["last"] for c in curves] == [1.0, 0.5]
    assert loss_svg(curves).count("<polyline") == 2 and loss_svg([]) == ""
    assert DATA.exists()


def test_segmenting_again_hides_the_old_result_at_the_preview_and_removes_it_at_the_end(segmented):
    """The real engine on the sample CT: the old result is not drawn under the new coarse preview (two organ maps
    on top of each other), and it is gone once the new result is in."""
    import time

    session, _ = segmented
    old = session.segmentation
    run = session.start_segment()
    hidden_at_preview = None
    while session.poll_segment():
        if run.coarse_node is not None and hidden_at_preview is None:
            hidden_at_preview = not old.GetDisplayNode().GetVisibility()
        time.sleep(0.05)
    assert run.state == "done", run.error
    assert hidden_at_preview is True
    assert old.GetScene() is None and session.segmentation is run.result_node
    assert session.segmentation.GetDisplayNode().GetVisibility()
