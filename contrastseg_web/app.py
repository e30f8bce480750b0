"""The trame app: trame-slicer's scene and views, the page (ui.py), and buttons bound to the handlers.

Each handler is a thin wrapper: call WebSession / Corrector / Training, copy the result into the page's state,
and turn a ContrastSegError (or any other failure) into one sentence in the page, after which the app goes on
(`reported`). Long work is followed by asyncio tasks that poll the Logic, as the Qt panels poll from a QTimer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
import traceback

from trame.app import TrameApp
from trame_server.utils.asynchronous import create_task
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import SegmentationEffectErase, SegmentationEffectPaint

from contrastseg.errors import ContrastSegError
from . import auth, guard, ui
from .edits import Corrector, is_negative
from .effects import BOX, POINT, PromptEffect, fix_pipeline_views
from .session import WebSession
from .surfaces import SETTLE_S
from .training import Training, loss_svg, models

TOOLS = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase}


# the progress bar and status of a Segment are updated this often: ten times a second kept the browser redrawing
# them (a quarter of a core on the 2 the engine needs)
PROGRESS_S = 0.5


def reported(method):
    """Run a handler; a failure becomes a sentence in the page (cs_error) and the app keeps working."""

    def fail(self, err: Exception) -> None:
        text = str(err) if isinstance(err, ContrastSegError) else f"Something went wrong: {type(err).__name__}: {err}"
        if not isinstance(err, ContrastSegError):
            traceback.print_exc()
        with self.state:
            self.state.cs_error = text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def run_async(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - every failure is shown, none stops the server
                fail(self, err)
        return run_async

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001
            fail(self, err)
    return run


class ContrastSegWebApp(TrameApp):
    def __init__(self, server=None, data_dir=None, token: str | None = None, max_upload_mb: float = guard.DEFAULT_MAX_UPLOAD_MB,
                 device: str = "auto", threads: int = 0):
        super().__init__(server)
        self.token = token
        self.max_upload_mb = float(max_upload_mb)
        self.max_upload_bytes = int(self.max_upload_mb * 1024 * 1024)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Primary")
        self.editor = self.slicer_app.segmentation_editor
        fix_pipeline_views(self.editor, self.slicer_app.view_manager)
        self.session = WebSession(self.slicer_app, data_dir, max_upload_mb, device, threads)
        self.corrector = Corrector(self.session)
        self.surfaces = self.corrector.surfaces
        self.training = Training(self.session)
        self.editor.register_effect_type(PromptEffect)
        self.prompt_effect: PromptEffect = self.editor.get_effect(PromptEffect)
        self.prompt_effect.on_click, self.prompt_effect.on_box = self._on_click, self._on_box
        self.editor.undo_stack.index_changed.connect(self._undo_changed)
        self.editor.segmentation_modified.connect(self._segmentation_modified)
        self._rows_due, self._rows_pending = 0.0, False
        self._defaults()
        self.ui = ui.build(self)
        self.state.change("cs_tool")(self._tool_changed)
        self.state.change("cs_show3d")(self._show3d_changed)
        self.server.controller.on_server_bind.add(self._bind_gate)
        self.server.controller.on_server_exited.add(lambda **_: self.session.shutdown())

    def _defaults(self) -> None:
        s = self.state
        s.trame__title = "ContrastSeg"
        s.trame__favicon = None
        s.update({"cs_error": "", "cs_message": "", "cs_status": "", "cs_progress": 0, "cs_running": False,
                  "cs_has_ct": False, "cs_rows": [], "cs_organ": "", "cs_tool": "none", "cs_negative": False,
                  "cs_can_undo": False, "cs_can_redo": False, "cs_edit_status": "", "cs_save_status": "",
                  "cs_download_name": "labels.nii.gz", "cs_data_files": self.session.data_files(), "cs_data_file": "",
                  "cs_training": False, "cs_train_status": "", "cs_train_progress": 0, "cs_loss_svg": "",
                  "cs_compare_text": "", "cs_compare_rows": [], "cs_show3d": True, "cs_model": ""})
        self._refresh_models()

    def _bind_gate(self, wslink_server) -> None:
        """The token and origin checks in front of every HTTP and websocket request (auth.py)."""
        wslink_server.app.middlewares.append(auth.middleware(self.token))

    # ------------------------------------------------------------------------------------------- loading
    @reported
    def load_sample(self):
        self._loaded(self.session.load_sample())

    @reported
    def load_data_file(self):
        self._loaded(self.session.load_data_file(self.state.cs_data_file))

    @reported
    def upload(self, files):
        if not files:
            raise ContrastSegError("no file arrived; choose the file again")
        f = files[0] if isinstance(files, list) else files
        content = f.get("content")
        if isinstance(content, list):
            content = b"".join(content)
        try:
            self._loaded(self.session.load_upload(f.get("name", ""), f.get("size"), content))
        except Exception:
            self.state.cs_message = ""
            raise

    def _loaded(self, message: str) -> None:
        self.training.close_compare()
        with self.state:
            self.state.update({"cs_message": message, "cs_error": "", "cs_has_ct": True, "cs_rows": [], "cs_organ": "",
                               "cs_status": "", "cs_progress": 0, "cs_tool": "none", "cs_edit_status": "",
                               "cs_save_status": "", "cs_compare_text": "", "cs_compare_rows": [],
                               "cs_download_name": f"{guard.safe_name(self.session.volume.GetName())}-labels.nii.gz"})
        self._undo_changed()

    # ------------------------------------------------------------------------------------------- segment
    @reported
    def segment(self):
        self.state.cs_tool = "none"
        self.training.close_compare()
        self.session.start_segment(self.state.cs_model or "")
        self.surfaces.begin()  # a settle still waiting from the last edit does not run during the engine's work
        self.surfaces.reset()
        self._segment_started = time.monotonic()
        with self.state:
            self.state.update({"cs_running": True, "cs_error": "", "cs_rows": [], "cs_organ": "", "cs_progress": 0,
                               "cs_status": "Starting the engine..."})
        create_task(self._follow_segment())

    @reported
    async def _follow_segment(self):
        run, coarse_listed, shown = self.session.run, False, 0.0
        while self.session.poll_segment():
            if run.coarse_node is not None and not coarse_listed:  # the coarse preview, listed at once
                with self.state:
                    self.state.cs_rows, coarse_listed = self.session.rows(), True
            if time.monotonic() - shown >= PROGRESS_S:
                shown = time.monotonic()
                with self.state:
                    self.state.cs_progress = round(run.fraction * 100)
                    self.state.cs_status = run.status_text()
            await asyncio.sleep(0.1)
        with self.state:
            self.state.cs_running = False
            self.state.cs_progress = 100 if run.state == "done" else self.state.cs_progress
            engine = (run.timings or {}).get("total")
            self.state.cs_status = run.status_text() if not run.error else f"{run.status_text()} {run.error}"
            if run.state == "done" and engine:  # what the page added on top of the engine's own work
                self.state.cs_status = f"Done in {run.elapsed:.1f} s (the engine's segmentation: {engine:.1f} s)."
            self.state.cs_rows = self.session.rows()  # the result, or the coarse map a cancel kept
            if run.state == "failed" and run.error:
                self.state.cs_error = run.error[:1].upper() + run.error[1:]
        self._undo_changed()
        if self.session.segmentation is not None and self.state.cs_show3d:
            await asyncio.sleep(SETTLE_S)  # the organs are listed and in the slice views first; surfaces follow
            t = time.monotonic()
            self.session.show_3d(True)
            with self.state:
                self.state.cs_status += f" 3D surfaces in {time.monotonic() - t:.1f} s."

    @reported
    def cancel(self):
        self.session.cancel_segment()

    # ------------------------------------------------------------------------------------------- organs
    @reported
    def select_organ(self, key):
        self.session.select(key)
        self.state.cs_organ = key
        self._tool_changed(self.state.cs_tool)

    @reported
    def set_visible(self, key, visible):
        self.session.set_visible(key, visible)
        self.state.cs_rows = [dict(r, visible=bool(visible)) if r["key"] == key else r for r in self.state.cs_rows]

    def _show3d_changed(self, cs_show3d=True, **_):
        if self.session.segmentation is not None and not self.state.cs_running:
            self.session.show_3d(bool(cs_show3d))

    def _refresh_rows(self, keys=None, known=None) -> None:
        """The organ list after an edit: only the rows of `keys` are counted again (a count walks the CT), and
        not those whose count is `known`."""
        if keys is None:
            rows = self.session.rows()
        else:
            fresh = {r["key"]: r for r in self.session.rows(keys, known)}
            rows = [fresh.get(r["key"], r) for r in self.state.cs_rows]
        with self.state:
            self.state.cs_rows = rows

    # ------------------------------------------------------------------------------------------- correct
    @reported
    def _tool_changed(self, cs_tool="none", **_):
        key = self.state.cs_organ
        if cs_tool == "none" or not key or self.session.segmentation is None:
            self.editor.deactivate_effect()
            if cs_tool != "none" and not key:
                self.state.cs_edit_status = "Select the organ to correct in the list first."
            return
        self.editor.set_active_segment_id(key)
        if cs_tool in TOOLS:
            self.surfaces.settle(show_3d=bool(self.state.cs_show3d))  # the brush starts from a settled segmentation
            self.editor.set_active_effect_type(TOOLS[cs_tool])
        else:
            self.editor.set_active_effect_type(PromptEffect)
            self.prompt_effect.tool = BOX if cs_tool == "box" else POINT
        self.state.cs_edit_status = {"point": "Click in a slice view: where the organ is missing (or, removing, where it should not be).",
                                     "box": "Drag a box around the organ in a slice view.",
                                     "paint": "Paint the organ in a slice view.", "erase": "Erase in a slice view."}[cs_tool]

    def _on_click(self, ras, ctrl, shift):
        negative = is_negative(self.state.cs_negative, ctrl, shift)
        create_task(self._correct("click", ras=ras, negative=negative))

    def _on_box(self, a, b):
        create_task(self._correct("box", ras_a=a, ras_b=b))

    @reported
    async def _correct(self, kind, **kw):
        self.surfaces.begin()
        key = self.state.cs_organ
        name = next((r["name"] for r in self.state.cs_rows if r["key"] == key), key)
        with self.state:
            self.state.cs_edit_status = f"Updating the {name}..."
        await asyncio.sleep(0)
        t = time.monotonic()
        change = self.corrector.click(key, kw["ras"], kw["negative"]) if kind == "click" else self.corrector.box(key, kw["ras_a"], kw["ras_b"])
        from ContrastSegLib.correct import change_message

        # the organ's count is the worker's; the organs it took voxels from are counted again
        self._refresh_rows([key, *(change.get("taken") or {})], known={key: change["voxels_after"]})
        with self.state:
            self.state.cs_edit_status = change_message(name, change) + f" (shown after {time.monotonic() - t:.1f} s)"
        self._undo_changed()
        await self._settle()

    @reported
    async def _settle(self):
        await self.surfaces.follow(lambda: self.state.cs_show3d)

    @reported
    def clear_organ(self):
        self.surfaces.begin()
        removed = self.corrector.clear(self.state.cs_organ)
        self._refresh_rows([self.state.cs_organ])
        self.state.cs_edit_status = f"Cleared ({removed} voxels). Click where the organ is to segment it again."
        create_task(self._settle())

    @reported
    def undo(self):
        self._undo_redo(redo=False)

    @reported
    def redo(self):
        self._undo_redo(redo=True)

    def _undo_redo(self, redo: bool) -> None:
        self.surfaces.begin()
        self.surfaces.before_undo(redo)
        (self.session.redo if redo else self.session.undo)()
        self._refresh_rows()
        create_task(self._settle())

    def _segmentation_modified(self, *_):
        """Paint, Erase, undo and redo change voxels without a handler of ours: count again once they settle
        (a second after the last change, so a click's own update reaches the page first)."""
        self._rows_due = time.monotonic() + 1.0
        if not self._rows_pending:
            self._rows_pending = True
            create_task(self._refresh_rows_later())

    @reported
    async def _refresh_rows_later(self):
        try:
            while time.monotonic() < self._rows_due or self.state.cs_running:
                await asyncio.sleep(0.25)
            if self.session.segmentation is not None:
                self._refresh_rows()
            self._undo_changed()
        finally:
            self._rows_pending = False

    def _undo_changed(self, *_):
        stack = self.editor.undo_stack
        with self.state:
            self.state.cs_can_undo = bool(stack is not None and stack.can_undo())
            self.state.cs_can_redo = bool(stack is not None and stack.can_redo())

    # ------------------------------------------------------------------------------------------- save
    @reported
    async def download(self):
        name, data = self.session.label_file()
        with self.state:
            self.state.cs_save_status = f"Label map {name} ({len(data) // 1024} kB) sent to the browser."
        return self.server.protocol.addAttachment(data)

    @reported
    def add_to_dataset(self):
        self.state.cs_save_status = self.session.add_to_dataset()

    # ------------------------------------------------------------------------------------------- training
    def _refresh_models(self) -> None:
        names = [m["name"] for m in models()]
        with self.state:
            self.state.cs_model_names = names
            if self.state.cs_model not in names:
                self.state.cs_model = next((m["name"] for m in models() if m["default"]), "")
            if names and not self.state.cs_compare_old:
                self.state.cs_compare_old = next((m["name"] for m in models() if m["default"]), names[0])
            if names:
                self.state.cs_compare_new = names[-1] if self.state.cs_compare_new not in names else self.state.cs_compare_new

    @reported
    def start_training(self):
        message = self.training.start()
        with self.state:
            self.state.update({"cs_training": True, "cs_train_status": message, "cs_train_progress": 0})
        create_task(self._follow_training())

    @reported
    async def _follow_training(self):
        while self.training.poll():
            self._show_training()
            await asyncio.sleep(1.0)
        self._show_training()
        self._refresh_models()

    def _show_training(self) -> None:
        status = self.training.status()
        with self.state:
            self.state.cs_training = status["running"]
            self.state.cs_train_status = status["text"]
            self.state.cs_train_progress = round(status["fraction"] * 100)
            self.state.cs_loss_svg = loss_svg(status["curves"])

    @reported
    def cancel_training(self):
        self.training.cancel()
        self._show_training()

    @reported
    def compare(self):
        self.state.cs_compare_text = self.training.start_compare(self.state.cs_compare_old, self.state.cs_compare_new)
        self.state.cs_running = True
        create_task(self._follow_compare())

    @reported
    async def _follow_compare(self):
        try:
            while self.training.poll_compare():
                await asyncio.sleep(0.2)
            result = self.training.compare_result()
            with self.state:
                self.state.cs_compare_text, self.state.cs_compare_rows = result["text"], result["rows"]
        finally:
            with self.state:
                self.state.cs_running = False

    @reported
    def close_compare(self):
        self.training.close_compare()
        self.state.cs_compare_text, self.state.cs_compare_rows = "", []
