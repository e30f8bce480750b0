"""ContrastSeg's web app in a real headless Chromium (Debian's), driven by Playwright like a person would use it.

One server (`contrastseg web`, the real default model on 2 CPU threads, a fresh CONTRASTSEG_HOME) serves the
first two tests, in order: a bad upload is refused with a sentence and the app goes on; then the whole loop on
the sample CT: load, Segment, the organs listed, the right kidney cleared and brought back by one click in the
axial view, undo and redo, the label map downloaded and the case added to the local dataset with its
provenance. A second server with a token refuses requests without it and lets the page in with it.

Screenshots go to docs/images/web-*.png (the README and docs/web.md show them). Skipped, with the reason, where
Chromium, Playwright or the web extra is missing (.ci/run installs all three).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import TS, needs_data
from contrastseg.paths import default_model
from webpage import WebServer, browser, choose, skip_reason, view_centre, voxels, wait_text, wait_views_ready

pytestmark = [pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())), needs_data]

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    shutil.copy(TS / "example_ct_sm.nii.gz", data / "small-ct.nii.gz")
    web = WebServer("--data-dir", str(data), home=tmp_path_factory.mktemp("home"))
    yield web
    web.stop()


@pytest.fixture(scope="module")
def page(server):
    with browser() as p:
        p.set_default_timeout(120_000)  # a busy machine: the server answers clicks after its current work
        p.goto(server.url)
        p.wait_for_selector("#load-sample")
        wait_views_ready(p)
        yield p


def shot(page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"web-{name}.png"))


def page_says(page) -> str:
    error = page.text_content("#error-alert") if page.is_visible("#error-alert") else ""
    return f"status {page.text_content('#edit-status')!r}, error {error!r}"


def test_a_bad_upload_shows_the_clis_sentence_and_the_app_keeps_working(page, server):
    page.set_input_files("#upload-input", str(TS / "example_seg.nii.gz"))  # a label map, not a CT
    text = wait_text(page, "#error-alert", "t.includes('Hounsfield')", 120)
    assert "does not look like CT in Hounsfield units" in text
    shot(page, "bad-upload")
    page.click("#error-alert button")  # closes the sentence
    choose(page, "data-file-select", "small-ct.nii.gz")
    page.click("#load-data-file")
    assert wait_text(page, "#load-message", "t.startsWith('Loaded')", 120) == \
        "Loaded --data-dir file small-ct.nii.gz (122x101x30 voxels)."


def test_segment_click_undo_save_on_the_sample_ct(page, server, tmp_path):
    page.click("#load-sample")
    assert wait_text(page, "#load-message", "t.includes('sample CT')", 120).startswith("Loaded the sample CT")
    page.click("#segment-button")
    page.wait_for_selector("#organ-liver", timeout=600_000)  # listed as soon as the coarse map is in
    wait_text(page, "#segment-status", "t.startsWith('Done') || t.startsWith('Failed')", 600)
    assert page.text_content("#segment-status").startswith("Done"), page.text_content("#segment-status")
    wait_text(page, "#segment-status", "t.includes('3D surfaces')", 300)
    rows = page.locator(".cs-row")
    listed = json.loads((default_model() / "card.json").read_text())["organs"]  # the sample CT holds each
    assert rows.count() == len(listed) and "SCT 64033007" in page.text_content("#organ-right_kidney")
    found = voxels(page, "right_kidney")
    assert found > 1000
    shot(page, "segmented")

    page.click("#organ-right_kidney")  # selects it and centres the slice views on it
    page.wait_for_selector("#organ-right_kidney.selected")
    page.click("#clear-organ")
    wait_text(page, "#voxels-right_kidney", "t.startsWith('0 ')", 60)
    page.click("#tool-point")
    page.wait_for_timeout(500)
    page.mouse.click(*view_centre(page))  # one positive click where the kidney was
    try:
        wait_text(page, "#voxels-right_kidney", "!t.startsWith('0 ')", 600)
    except Exception:  # noqa: BLE001 - say what the page said instead
        page.screenshot(path=str(tmp_path / "click-failed.png"))
        pytest.fail(f"the click did not bring the kidney back: {page_says(page)} (screenshot {tmp_path})")
    clicked = voxels(page, "right_kidney")
    assert clicked > 0.5 * found, (clicked, found, page.text_content("#edit-status"))
    assert page.text_content("#edit-status").startswith("right kidney: +")
    page.wait_for_timeout(1000)
    shot(page, "click")

    page.click("#undo-button")
    wait_text(page, "#voxels-right_kidney", "t.startsWith('0 ')", 60)
    page.click("#redo-button")
    wait_text(page, "#voxels-right_kidney", f"t.startsWith('{clicked} ')", 60)

    page.click("#tool-paint")  # trame-slicer's brush (its 2.0.0 AttributeError mended), on the same undo stack
    page.wait_for_timeout(500)
    x, y = view_centre(page)
    page.mouse.move(x - 70, y - 70)
    page.mouse.down()
    page.mouse.move(x - 90, y - 90, steps=6)
    page.mouse.up()
    wait_text(page, "#voxels-right_kidney", f"parseInt(t) > {clicked}", 60)
    page.click("#undo-button")
    wait_text(page, "#voxels-right_kidney", f"t.startsWith('{clicked} ')", 60)

    with page.expect_download() as download:
        page.click("#download-button")
    path = tmp_path / "labels.nii.gz"
    download.value.save_as(path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert int((labels == 2).sum()) == clicked and labels.shape == (112, 101, 122)

    page.click("#add-dataset")
    status = wait_text(page, "#save-status", "t.startsWith('Saved') || t.length > 0 && !t.startsWith('Label map')", 120)
    # the click may also have taken voxels from a neighbour (the prompt rules), which is then corrected too
    assert status.startswith("Saved") and "right_kidney" in status.split("Corrected: ")[1], status
    manifest = json.loads((server.home / "dataset" / "manifest.json").read_text())
    (entry,) = manifest["entries"]
    edited = entry["provenance"]["edited"]
    assert "right_kidney" in edited and all(e["added"] == 0 for k, e in edited.items() if k != "right_kidney")
    assert entry["initial"] and entry["provenance"]["note"] == "contrastseg web: the sample CT"
    assert np.unique(labels).tolist()[0] == 0
    shot(page, "saved")


def test_a_token_keeps_out_requests_without_it(tmp_path, page):
    # a new tab of the module's browser: Playwright's sync API runs one instance per thread, and the module's
    # page holds it until the module ends
    web = WebServer("--token", TOKEN, home=tmp_path / "home")
    try:
        for path, headers in (("/", {}), ("/index.html", {}), ("/ws", {"Upgrade": "websocket", "Connection": "Upgrade"}),
                              ("/", {"Authorization": "Bearer wrong-token-000000"})):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(web.url.rstrip("/") + path, headers=headers), timeout=30)
            assert err.value.code == 401, path
        ok = urllib.request.urlopen(urllib.request.Request(web.url + "index.html",
                                                           headers={"Authorization": f"Bearer {TOKEN}"}), timeout=30)
        assert ok.status == 200
        tab = page.context.new_page()
        try:
            tab.goto(web.url)
            assert tab.text_content("#login-message") == "This ContrastSeg app needs its token."
            tab.fill("#token", "not-the-token-at-all")
            tab.click("#login-button")
            assert tab.text_content("#login-message") == "That token is not right."
            shot(tab, "token")
            tab.fill("#token", TOKEN)
            tab.click("#login-button")
            tab.wait_for_selector("#load-sample", timeout=120_000)  # the app itself, over its websocket
            wait_views_ready(tab)
        finally:
            tab.close()
    finally:
        web.stop()
