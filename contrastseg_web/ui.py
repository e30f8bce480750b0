"""The page: a panel of ContrastSeg's steps beside trame-slicer's axial, coronal, sagittal and 3D views.

Layout only: every button calls a method of the app (app.py) and every text comes from the page's state
(names starting with `cs_`). Element ids (`id="segment-button"`, ...) are what the browser tests and
scripts/bench_web.py click; buttons say what they do.
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v

STYLE = """
html { overflow-y: auto; }
.cs-panel { font-size: 0.85rem; }
.cs-section { padding: 6px 10px 10px 10px; border-bottom: 1px solid #444; }
.cs-section h3 { font-size: 0.8rem; text-transform: uppercase; letter-spacing: .06em; color: #9ab; margin: 4px 0 6px 0; }
.cs-row { display: flex; align-items: center; gap: 6px; padding: 1px 4px; cursor: pointer; border-radius: 4px; }
.cs-row.selected { background: #35506b; }
.cs-swatch { width: 12px; height: 12px; border-radius: 2px; flex: none; }
.cs-name { flex: 1; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cs-code { color: #9aa; font-size: 0.72rem; width: 8.5em; }
.cs-vox { color: #cdd; font-size: 0.72rem; width: 6em; text-align: right; }
.cs-msg { font-size: 0.8rem; margin-top: 4px; color: #cde; }
"""


def build(app) -> VAppLayout:
    """The whole page for `app` (a ContrastSegWebApp); returns the layout (trame serves it)."""
    s = app.server
    with VAppLayout(s, theme="dark") as layout:
        client.Style(STYLE)
        with v.VAppBar(density="compact"):
            v.VToolbarTitle("ContrastSeg: abdominal organs in CT")
            v.VProgressCircular(indeterminate=("!!trame__busy",), size=18, width=2, classes="mr-4")
        with v.VNavigationDrawer(permanent=True, width=410, classes="cs-panel"):
            v.VAlert(v_if=("cs_error",), text=("cs_error",), type="error", density="compact", closable=True,
                     id="error-alert", classes="ma-2", click_close="cs_error = ''")
            _load_section(app)
            _segment_section(app)
            _organ_section(app)
            _correct_section(app)
            _save_section(app)
            _train_section(app)
        with v.VMain():
            with html.Div(classes="d-flex flex-row", style="height: calc(100vh - 48px);", id="views"):
                app.layout_manager.initialize_layout_grid(layout)
    return layout


def _load_section(app) -> None:
    with html.Div(classes="cs-section"):
        html.H3("1. CT")
        with html.Div(classes="d-flex flex-wrap", style="gap: 6px;"):
            v.VBtn("Load sample CT", id="load-sample", size="small", click=app.load_sample, disabled=("cs_running",))
            v.VBtn("Upload NIfTI or zipped DICOM", id="upload-button", size="small", disabled=("cs_running",),
                   click="document.getElementById('upload-input').click()")
        html.Input(type="file", id="upload-input", style="display: none;", accept=".nii,.gz,.nrrd,.mha,.mhd,.zip",
                   change=(f"(f => {{ if (!f) return; if (f.size > {app.max_upload_bytes}) {{ cs_error = "
                           f"'The file is ' + Math.round(f.size / 1048576) + ' MB; this app accepts at most "
                           f"{app.max_upload_mb:.0f} MB per file.'; $event.target.value = ''; return; }} "
                           f"cs_message = 'Uploading ' + f.name + '...'; const input = $event.target; "
                           f"trigger('{app.server.controller.trigger_name(app.upload)}', [[f]])"
                           ".finally(() => { input.value = ''; }); })($event.target.files[0])"))
        with html.Div(v_if=("cs_data_files.length",), classes="d-flex mt-2", style="gap: 6px;"):
            v.VSelect(v_model=("cs_data_file", ""), items=("cs_data_files",), label="File in the data folder",
                      density="compact", hide_details=True, id="data-file-select")
            v.VBtn("Load file", id="load-data-file", size="small", click=app.load_data_file,
                   disabled=("cs_running || !cs_data_file",))
        html.Div("{{ cs_message }}", classes="cs-msg", id="load-message")


def _segment_section(app) -> None:
    with html.Div(classes="cs-section"):
        html.H3("2. Segment")
        with html.Div(classes="d-flex align-center", style="gap: 6px;"):
            v.VSelect(v_model=("cs_model", ""), items=("cs_model_names", []), label="Model", density="compact",
                      hide_details=True, style="max-width: 180px;", id="model-select")
            v.VBtn("Segment", id="segment-button", color="primary", size="small", click=app.segment,
                   disabled=("cs_running || !cs_has_ct",))
            v.VBtn("Cancel", id="cancel-button", size="small", click=app.cancel, disabled=("!cs_running",))
        v.VProgressLinear(model_value=("cs_progress", 0), height=6, classes="mt-2", id="segment-progress",
                          color="primary")
        html.Div("{{ cs_status }}", classes="cs-msg", id="segment-status")


def _organ_section(app) -> None:
    with html.Div(classes="cs-section"):
        with html.Div(classes="d-flex align-center"):
            html.H3("3. Organs", style="flex: 1;")
            v.VSwitch(v_model=("cs_show3d", True), label="3D surfaces", density="compact", hide_details=True,
                      color="primary", id="show3d-switch", style="flex: none;")
        html.Div("Segment the CT to list its organs.", v_if=("!cs_rows.length",), classes="cs-msg")
        with html.Div(id="organ-list"):
            with html.Div(v_for="row in cs_rows", key="row.key", classes="cs-row", click=(app.select_organ, "[row.key]"),
                          raw_attrs=[":class=\"{selected: row.key === cs_organ}\"", ":id=\"'organ-' + row.key\"",
                                     ":title=\"row.snomed_name + (row.modifier ? ', ' + row.modifier : '')\""]):
                html.Span(classes="cs-swatch", style=("{background: row.color}",))
                html.Span("{{ row.name }}", classes="cs-name")
                html.Span("{{ row.snomed }}", classes="cs-code")
                html.Span("{{ row.voxels }} vox", classes="cs-vox", raw_attrs=[":id=\"'voxels-' + row.key\""])
                eye = app.server.controller.trigger_name(app.set_visible)
                v.VBtn(icon=("row.visible ? 'mdi-eye' : 'mdi-eye-off'",), size="x-small", variant="text",
                       raw_attrs=[":id=\"'eye-' + row.key\"", f"@click.stop=\"trigger('{eye}', [row.key, !row.visible])\""])


def _correct_section(app) -> None:
    with html.Div(classes="cs-section"):
        html.H3("4. Correct the selected organ")
        with v.VBtnToggle(v_model=("cs_tool", "none"), density="compact", mandatory=True, divided=True,
                          variant="outlined", id="tool-toggle"):
            v.VBtn("Look", value="none", size="small", id="tool-none")
            v.VBtn("Click", value="point", size="small", id="tool-point")
            v.VBtn("Box", value="box", size="small", id="tool-box")
            v.VBtn("Paint", value="paint", size="small", id="tool-paint")
            v.VBtn("Erase", value="erase", size="small", id="tool-erase")
        with html.Div(classes="d-flex align-center mt-1", style="gap: 6px;"):
            v.VSwitch(v_model=("cs_negative", False), label="Click removes (Ctrl/Shift: the other way)",
                      density="compact", hide_details=True, id="negative-switch")
        with html.Div(classes="d-flex", style="gap: 6px;"):
            v.VBtn("Undo", id="undo-button", size="small", click=app.undo, disabled=("!cs_can_undo",),
                   prepend_icon="mdi-undo")
            v.VBtn("Redo", id="redo-button", size="small", click=app.redo, disabled=("!cs_can_redo",),
                   prepend_icon="mdi-redo")
            v.VBtn("Clear organ", id="clear-organ", size="small", click=app.clear_organ, disabled=("!cs_organ",))
        html.Div("{{ cs_edit_status }}", classes="cs-msg", id="edit-status")


def _save_section(app) -> None:
    with html.Div(classes="cs-section"):
        html.H3("5. Save")
        with html.Div(classes="d-flex flex-wrap", style="gap: 6px;"):
            v.VBtn("Download label map (NIfTI)", id="download-button", size="small", disabled=("!cs_rows.length",),
                   click=(f"utils.download(cs_download_name, trigger('{app.server.controller.trigger_name(app.download)}'), "
                          "'application/gzip')"))
            v.VBtn("Add to my dataset", id="add-dataset", size="small", click=app.add_to_dataset,
                   disabled=("!cs_rows.length || cs_running",))
        html.Div("{{ cs_save_status }}", classes="cs-msg", id="save-status")


def _train_section(app) -> None:
    with html.Div(classes="cs-section"):
        html.H3("6. Retrain and compare")
        with html.Div(classes="d-flex", style="gap: 6px;"):
            v.VBtn("Start training (defaults)", id="train-button", size="small", click=app.start_training,
                   disabled=("cs_training",))
            v.VBtn("Cancel training", id="train-cancel", size="small", click=app.cancel_training,
                   disabled=("!cs_training",))
        v.VProgressLinear(model_value=("cs_train_progress", 0), height=4, classes="mt-2", color="green")
        html.Div("{{ cs_train_status }}", classes="cs-msg", id="train-status")
        html.Div(v_html=("cs_loss_svg", ""), id="loss-curve")
        html.Div("Models: {{ cs_model_names.join(', ') }}", classes="cs-msg", id="model-list")
        with html.Div(classes="d-flex mt-1", style="gap: 6px;"):
            v.VSelect(v_model=("cs_compare_old", ""), items=("cs_model_names",), label="Old", density="compact",
                      hide_details=True)
            v.VSelect(v_model=("cs_compare_new", ""), items=("cs_model_names",), label="New", density="compact",
                      hide_details=True)
        with html.Div(classes="d-flex mt-1", style="gap: 6px;"):
            v.VBtn("Compare on this CT", id="compare-button", size="small", click=app.compare,
                   disabled=("cs_running || !cs_has_ct",))
            v.VBtn("Close comparison", size="small", click=app.close_compare, disabled=("!cs_compare_text",))
        html.Div("{{ cs_compare_text }}", classes="cs-msg", id="compare-status")
        with html.Div(v_for="r in cs_compare_rows", key="r.organ", classes="cs-row"):
            html.Span("{{ r.organ }}", classes="cs-name")
            html.Span("{{ r.dice.toFixed(2) }}", classes="cs-vox")
