"""The web app's handlers on real MRML: load a CT, Segment, list and show organs, save. No trame here.

`WebSession` is to the page what the Qt widget is to the Slicer panel: it holds the scene's current CT and
segmentation and calls the modules' Logic classes (`SegmentationLogic` for Segment, with the session's warm
worker; `nodes` for MRML <-> files; `export_case` for the dataset). Every handler either does its job or raises
ContrastSegError with one sentence the page shows; none of them touches a path the page chose except through
`guard.confined`. The trame layer (app.py) only binds buttons to these methods and copies their results into
the page's state, so everything here is tested on real MRML without a browser (Testing/test_web_handlers.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from contrastseg.errors import ContrastSegError
from . import guard, mrml


def _imports():
    """The Logic classes, imported once the globals they use point at this app's scene (mrml.install)."""
    from ContrastSegLib import nodes, use_engine_home
    from ContrastSegLib.parameter import COARSE_ONLY, REFINED, SegmentSettings
    from ContrastSegLib.segmentation import SegmentationLogic

    return nodes, use_engine_home, SegmentSettings, SegmentationLogic, (REFINED, COARSE_ONLY)


class WebSession:
    """One scene, one CT and its segmentation at a time (trame shares one server state among its tabs)."""

    def __init__(self, slicer_app, data_dir: Path | None = None, max_upload_mb: float = guard.DEFAULT_MAX_UPLOAD_MB,
                 device: str = "auto", threads: int = 0, python: str | None = None):
        mrml.install(slicer_app)
        nodes, use_engine_home, self._Settings, SegmentationLogic, self.qualities = _imports()
        self.nodes = nodes
        self.home = use_engine_home()  # CONTRASTSEG_HOME for this process and the worker it starts
        self.app, self.scene, self.editor = slicer_app, slicer_app.scene, slicer_app.segmentation_editor
        if self.editor.undo_stack is None:  # Paint, Erase and the prompted edits share it (edits.py)
            from undo_stack import UndoStack

            self.editor.set_undo_stack(UndoStack(undo_limit=50))
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.max_upload_mb = float(max_upload_mb)
        self.device, self.threads, self.python = device, int(threads or 0), python
        self.logic = SegmentationLogic(python=python)
        self.volume = None
        self.segmentation = None
        self.source = ""  # where the CT came from, for the dataset's provenance note
        self.run = None
        self.work = Path(tempfile.mkdtemp(prefix="contrastseg-web-"))

    # ------------------------------------------------------------------------------------------ loading
    def data_files(self) -> list[str]:
        return guard.list_data_files(self.data_dir)

    def load_sample(self) -> str:
        from contrastseg.paths import sample_ct

        return self._load(sample_ct(), "sample CT", "the sample CT")

    def load_data_file(self, name: str) -> str:
        path = guard.confined(name, self.data_dir)
        kind = "zip" if path.is_file() and path.name.lower().endswith(guard.ZIP_SUFFIXES) else "volume"
        if kind == "zip":
            return self._load_zip(path, Path(name).name, f"--data-dir file {name}")
        return self._load(path, Path(name).name.split(".")[0] or "CT", f"--data-dir file {name}")

    def load_upload(self, name: str, size: int | None, content: bytes | None) -> str:
        """A file sent by the browser: size limit, kind, a safe name, then the CLI's checks on the CT."""
        guard.check_upload_size(len(content) if content is not None else size, self.max_upload_mb)
        kind = guard.upload_kind(name)
        guard.check_upload_size(len(content or b""), self.max_upload_mb)  # what arrived, not what was announced
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.work))
        try:
            path = folder / guard.safe_name(name)
            path.write_bytes(content)
            if kind == "zip":
                return self._load_zip(path, path.name, f"upload {path.name}")
            return self._load(path, path.name.split(".")[0] or "CT", f"upload {path.name}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _load_zip(self, path: Path, name: str, source: str) -> str:
        folder = Path(tempfile.mkdtemp(prefix="zip-", dir=self.work))
        try:
            series = guard.extract_zip(path, folder, self.max_upload_mb)
            return self._load(series, name.rsplit(".", 1)[0] or "CT", source)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _load(self, path: Path, name: str, source: str) -> str:
        """Check the CT as the CLI does (`read_ct`: file, header, series, geometry, Hounsfield units), then show
        exactly that image: what the worker segments is what the page shows. The CLI's sentence names the file
        the page knows (the upload's name, the name under --data-dir), not a path on the server."""
        import SimpleITK as sitk

        from contrastseg.io import read_ct

        if self.run is not None and not self.run.finished:
            raise ContrastSegError("a segmentation is running; cancel it before loading another CT")
        try:
            image = read_ct(path)
        except ContrastSegError as err:
            raise ContrastSegError(str(err).replace(str(path), source)) from None
        staged = self.work / "loaded.nrrd"
        sitk.WriteImage(image, str(staged), useCompression=False)
        self.clear()  # the checked CT replaces the old one (and its name is free again)
        try:
            node = self.app.volumes_logic.AddArchetypeVolume(str(staged), name, 0)
        finally:
            staged.unlink(missing_ok=True)
        if node is None:
            raise ContrastSegError(f"{source} passed the checks but could not be shown; try saving it as NIfTI")
        self.volume, self.source = node, source
        self.app.display_manager.show_volume(node, do_reset_views=True)
        for i in range(node.GetNumberOfDisplayNodes()):  # the 3D view shows the organs, not the CT rendered on
            display = node.GetNthDisplayNode(i)        # the CPU at every frame (slow on 2 cores, and it hides them)
            if display is not None and display.IsA("vtkMRMLVolumeRenderingDisplayNode"):
                display.SetVisibility(False)
        size = "x".join(str(v) for v in image.GetSize())
        return f"Loaded {source} ({size} voxels)."

    def clear(self) -> None:
        """Remove the CT and its segmentations (a new CT replaces them; nothing of the old one stays)."""
        keep = self.volume
        for node in self._segmentation_nodes():
            self.nodes.remove_node(node)
        if keep is not None:
            self.nodes.remove_node(keep)
        self.volume = self.segmentation = self.run = None
        if self.editor.undo_stack is not None:
            self.editor.undo_stack.clear()

    def _segmentation_nodes(self) -> list:
        cls = "vtkMRMLSegmentationNode"
        return [self.scene.GetNthNodeByClass(i, cls) for i in range(self.scene.GetNumberOfNodesByClass(cls))]

    # ------------------------------------------------------------------------------------------ segment
    def settings(self, model: str = "", coarse_only: bool = False):
        refined, coarse = self.qualities
        return self._Settings(model=model or "", device=self.device, quality=coarse if coarse_only else refined,
                              show3D=False, threads=self.threads)

    def start_segment(self, model: str = "", coarse_only: bool = False):
        """Segment the CT in the warm worker; the coarse map shows first, the refined one replaces it in place.
        3D surfaces are built after the slices show (`show_3d`), so the organs appear as soon as they exist."""
        if self.volume is None:
            raise ContrastSegError("load a CT first (the sample CT, an upload or a file from the list)")
        if self.run is not None and not self.run.finished:
            raise ContrastSegError("a segmentation is already running")
        old = self._segmentation_nodes()
        # the old organs' 3D surfaces off while the engine runs: the coarse preview re-renders every view, and the
        # 3D view drawing IRCAD's surfaces in software took CPU from the engine (warm Segment 7.2 s vs 5.5 s cold)
        self.editor.set_surface_representation_enabled(False)
        self.run = self.logic.start(self.volume, self.settings(model, coarse_only))
        self._replaced = old
        return self.run

    def poll_segment(self) -> bool:
        """Advance the run; True while it goes on. When it ends well, its node becomes the edited one."""
        run = self.run
        if run is None:
            return False
        going = self.logic.poll(run)
        if run.coarse_node is not None:  # the preview replaces the old result in the views (it is removed at the end)
            for node in getattr(self, "_replaced", []):
                display = node.GetDisplayNode() if node is not run.coarse_node else None
                if display is not None and display.GetVisibility():
                    display.SetVisibility(False)
        kept = run.result_node if run.state == "done" else run.coarse_node  # a coarse map shown before a cancel stays
        if not going and kept is not None:
            for node in getattr(self, "_replaced", []):
                if node is not kept:
                    self.nodes.remove_node(node)
            self._replaced = []
            # activating a node while 3D is on builds every surface first (IRCAD: 1.8 s before "Done" showed);
            # off here, the page turns it back on once the organs are in the slice views (`show_3d`)
            self.editor.set_surface_representation_enabled(False)
            self._activate(kept)
        return going

    def cancel_segment(self) -> None:
        if self.run is not None and not self.run.finished:
            self.logic.cancel(self.run)

    def _activate(self, node) -> None:
        """Make `node` the segmentation the page lists, edits (paint, erase, clicks) and saves."""
        self.segmentation = node
        self.editor.set_active_segmentation(node, self.volume)
        self.editor.deactivate_effect()

    def undo(self) -> bool:
        stack = self.editor.undo_stack
        if stack is None or not stack.can_undo():
            return False
        stack.undo()
        return True

    def redo(self) -> bool:
        stack = self.editor.undo_stack
        if stack is None or not stack.can_redo():
            return False
        stack.redo()
        return True

    def show_3d(self, on: bool) -> None:
        """Build (or drop) closed surfaces so the organs show in the 3D view; they follow later edits."""
        if self.segmentation is not None:
            self.editor.set_surface_representation_enabled(bool(on))

    # ------------------------------------------------------------------------------------------ organs
    def rows(self, keys: list[str] | None = None, known: dict[str, int] | None = None) -> list[dict]:
        """The segments as the page lists them: BTCV name, colour, SNOMED CT code, voxel count, visibility
        (only those of `keys`, if given: a count walks the whole CT; `known` gives counts already at hand, such
        as a click's `voxels_after`)."""
        known = known or {}
        from contrastseg.organs import BY_ID

        node = self.segmentation or (self.run.coarse_node if self.run is not None else None)
        if node is None:
            return []
        import slicer

        segmentation, display = node.GetSegmentation(), node.GetDisplayNode()
        counts = None
        if keys is None or set(keys) - set(known):  # one label map for all (read from the organs' layer: 0.1 s)
            import numpy as np

            labels = self.nodes.labelmap_array(node, self.volume)
            counts = np.bincount(labels[labels != 0], minlength=max(BY_ID) + 1)  # the organ voxels, not the CT
        out = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment, key = segmentation.GetNthSegment(i), segmentation.GetNthSegmentID(i)
            if keys is not None and key not in keys:
                continue
            oid = self.nodes.organ_id(segment)
            organ = BY_ID.get(oid)
            if key in known:
                voxels = int(known[key])
            elif counts is not None and oid is not None:
                voxels = int(counts[oid])
            else:
                voxels = int((slicer.util.arrayFromSegmentBinaryLabelmap(node, key, self.volume) > 0).sum())
            out.append({"key": key, "id": oid, "name": segment.GetName(),
                        "color": "#%02x%02x%02x" % tuple(int(round(c * 255)) for c in segment.GetColor()),
                        "snomed": f"SCT {organ.snomed[1]}" if organ else "", "snomed_name": organ.snomed[2] if organ else "",
                        "modifier": organ.modifier[2] if organ and organ.modifier else "", "voxels": voxels,
                        "visible": bool(display.GetSegmentVisibility(key)) if display is not None else True})
        return out

    def set_visible(self, key: str, visible: bool) -> None:
        """Show or hide one organ in every view (axial, coronal, sagittal and 3D share the display node)."""
        node = self._need_segmentation()
        if node.GetSegmentation().GetSegment(key) is None:
            raise ContrastSegError(f"there is no segment '{key}'")
        node.GetDisplayNode().SetSegmentVisibility(key, bool(visible))

    def select(self, key: str) -> str:
        """Make `key` the organ that clicks, paint and erase change, and centre the slice views on it."""
        node = self._need_segmentation()
        if node.GetSegmentation().GetSegment(key) is None:
            raise ContrastSegError(f"there is no segment '{key}'")
        self.editor.set_active_segment_id(key)
        centre = self.organ_centre(key)
        if centre is not None:
            for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
                self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByCentering(*centre)
        return key

    def organ_centre(self, key: str) -> list[float] | None:
        """The organ's centroid in RAS millimetres, None when its segment is empty."""
        import numpy as np
        import slicer
        import vtk

        mask = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation, key, self.volume)
        if mask is None or not mask.any():
            return None
        k, j, i = np.argwhere(mask > 0).mean(0)
        matrix = vtk.vtkMatrix4x4()
        self.volume.GetIJKToRASMatrix(matrix)
        return list(matrix.MultiplyPoint([float(i), float(j), float(k), 1.0])[:3])

    def _need_segmentation(self):
        if self.segmentation is None:
            raise ContrastSegError("segment the CT first")
        return self.segmentation

    # ------------------------------------------------------------------------------------------ save
    def label_file(self) -> tuple[str, bytes]:
        """The segmentation as a BTCV label map (NIfTI, the CT's grid): (file name, bytes) for the download."""
        node = self._need_segmentation()
        array = self.nodes.labelmap_array(node, self.volume)
        path = self.work / "labels.nii.gz"
        try:
            self.nodes.write_labels_like(array, self.volume, path)
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        return f"{guard.safe_name(self.volume.GetName())}-labels.nii.gz", data

    def add_to_dataset(self, validation: bool = False) -> str:
        """Store the CT and its corrected organs in the local dataset ($CONTRASTSEG_HOME/dataset) with provenance:
        the model and the initial segmentation (so the edited organs are known) from the node, the prompted
        edits, and where the CT came from. The page names no folder: the dataset is the only place written."""
        from ContrastSegTrainingLib.export import export_case

        node = self._need_segmentation()
        result = export_case(self.volume, node, note=f"contrastseg web: {self.source}", validation=validation)
        edited = sorted((result.record.get("provenance") or {}).get("edited") or {})
        return result.message() + (f" Corrected: {', '.join(edited)}." if edited else " No organ was changed.")

    def shutdown(self) -> None:
        """Stop the worker and remove the session's files (the app's exit, and tests)."""
        self.cancel_segment()
        from ContrastSegLib.worker import shutdown_shared_worker

        shutdown_shared_worker()
        shutil.rmtree(self.work, ignore_errors=True)

