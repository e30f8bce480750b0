"""The web app's speed, measured from the browser (issue 21, item 4), against the worker alone on the same CT.

Drives Debian's headless Chromium through `contrastseg web --threads 2` on IRCAD patient 1 (512x512x129, read
from --data-dir in place) and measures, from the page's side:
  - Segment: the click on "Segment" until the status says Done (the organs are then listed and in the slice
    views; the 3D surfaces follow), twice: cold (the page's first Segment starts the worker: torch, model, CT)
    and warm (the CT open in the worker);
  - a click on the right kidney: the organ is cleared, the Click tool takes one click at the centre of the
    axial view (the slice views centre on the selected organ), and the time runs from the mouse click until the
    page shows the kidney's new voxel count (`count`) and until the axial view's image has changed after that
    (`image`); repeated `--clicks` times, each after an undo (which clears the kidney again) and a pause
    (`--pauses`, each in turn: 3 s, when the last edit's 3D surfaces are built, and 1 s, while they are);
and, with the same worker command the page starts (`contrastseg serve --stdio --threads 2`), the worker alone:
start + open + segment (cold) and a second segment of the open CT (warm). The page also shows the engine's own
time for each Segment, so `page_minus_engine_warm_s` is what the page adds (files, MRML, views, state).

    python scripts/bench_web.py [--clicks 5] [--pauses 3 1] [--threads 2] [--out bench-web.json] [--no-worker-alone]
                                 [--no-surfaces]

Needs the web extra, Playwright and /usr/bin/chromium (Testing/webpage.py). Run it on an otherwise idle machine;
the numbers go to the README.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))

from webpage import WebServer, browser, choose, skip_reason, view_centre, voxels, wait_text, wait_views_ready  # noqa: E402

DATA = REPO.parent / "shared" / "data"
CASE = "ircad-3d-01-patient1/PATIENT_DICOM"


def worker_alone(threads: int) -> dict:
    from contrastseg.serve_client import Client

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    t = time.perf_counter()
    client = Client([sys.executable, "-m", "contrastseg.cli", "serve", "--stdio", "--threads", str(threads)]).start()
    opened = client.request("open", ct=str(DATA / CASE))
    assert opened["ok"], opened
    first = client.request("segment", ct=opened["ct"], output=str(work / "a.nii.gz"), coarse_output=str(work / "c.nii.gz"))
    cold = time.perf_counter() - t
    assert first["ok"], first
    t = time.perf_counter()
    second = client.request("segment", ct=opened["ct"], output=str(work / "b.nii.gz"), coarse_output=str(work / "d.nii.gz"))
    warm = time.perf_counter() - t
    assert second["ok"], second
    client.request("shutdown")
    client.stop()
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 2)}


def page_segment(page) -> tuple[float, float]:
    """(seconds from the click on Segment until the page says Done, the engine's own seconds for it)."""
    t = time.perf_counter()
    page.click("#segment-button")
    wait_text(page, "#segment-status", "!t.startsWith('Done')", 60)  # started: the last run's Done is gone
    status = wait_text(page, "#segment-status", "t.startsWith('Done') || t.startsWith('Failed')", 3600)
    elapsed = time.perf_counter() - t
    if not status.startswith("Done"):
        raise RuntimeError(status)
    engine = re.search(r"the engine's segmentation: ([0-9.]+) s", status)
    return elapsed, float(engine.group(1)) if engine else float("nan")


def page_click(page) -> dict:
    """One click in the cleared kidney: seconds until the count changes, and until the axial image changes."""
    old_src = page.locator("img.image-display-area").first.get_attribute("src")
    x, y = view_centre(page)
    t = time.perf_counter()
    page.mouse.click(x, y)
    wait_text(page, "#voxels-right_kidney", "!t.startsWith('0 ')", 120)
    count = time.perf_counter() - t
    page.wait_for_function(f"document.querySelector('img.image-display-area').src !== {old_src!r}", timeout=60_000)
    image = time.perf_counter() - t
    return {"count_s": round(count, 2), "image_s": round(image, 2), "voxels": voxels(page, "right_kidney"),
            "status": page.text_content("#edit-status")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pauses", type=float, nargs="+", default=[3.0, 1.0],
                    help="seconds between the undo (or the clear) and the next click: 3 s lets the last edit's 3D "
                         "surfaces finish; 1 s clicks while they are being built")
    ap.add_argument("--no-surfaces", dest="surfaces", action="store_false",
                    help="turn the page's 3D surfaces off before the clicks (what building and drawing them costs)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-worker-alone", dest="worker_alone", action="store_false",
                    help="skip the worker-alone runs (the page's own engine timing still gives its overhead)")
    args = ap.parse_args()
    if skip_reason():
        sys.exit(f"cannot run: {skip_reason()}")
    result = {"case": CASE, "threads": args.threads}
    server = WebServer("--data-dir", str(DATA), "--threads", str(args.threads), "--max-upload-mb", "10")
    try:
        with browser() as page:
            page.set_default_timeout(300_000)
            page.goto(server.url)
            page.wait_for_selector("#load-sample")
            wait_views_ready(page)
            choose(page, "data-file-select", CASE)
            t = time.perf_counter()
            page.click("#load-data-file")
            wait_text(page, "#load-message", "t.startsWith('Loaded')", 300)
            result["load_s"] = round(time.perf_counter() - t, 2)
            for kind in ("cold", "warm"):  # cold: the page's first Segment starts the worker
                page_s, engine_s = page_segment(page)
                result[f"page_segment_{kind}_s"] = round(page_s, 2)
                result[f"engine_segment_{kind}_s"] = engine_s
                print(f"Segment ({kind}): page {page_s:.1f} s, the engine's own {engine_s:.1f} s", flush=True)
                wait_text(page, "#segment-status", "t.includes('3D surfaces')", 3600)  # the server is free again
                result[f"status_{kind}"] = page.text_content("#segment-status")
            page.click("#organ-right_kidney")
            page.wait_for_selector("#organ-right_kidney.selected")
            page.click("#clear-organ")
            wait_text(page, "#voxels-right_kidney", "t.startsWith('0 ')", 60)
            if not args.surfaces:
                page.click("#show3d-switch")  # 3D surfaces off: nothing is built or drawn in 3D after an edit
                page.wait_for_timeout(2000)
            page.click("#tool-point")
            for pause in args.pauses:
                clicks = []
                for i in range(args.clicks):
                    if clicks:
                        page.click("#undo-button")
                        wait_text(page, "#voxels-right_kidney", "t.startsWith('0 ')", 60)
                    page.wait_for_timeout(pause * 1000)
                    clicks.append(page_click(page))
                    print(f"pause {pause} s, click {i + 1}: {clicks[-1]}", flush=True)
                page.click("#undo-button")
                wait_text(page, "#voxels-right_kidney", "t.startsWith('0 ')", 60)
                result[f"clicks_after_{pause:g}s"] = clicks
                result[f"click_count_median_after_{pause:g}s"] = statistics.median(c["count_s"] for c in clicks)
                result[f"click_image_median_after_{pause:g}s"] = statistics.median(c["image_s"] for c in clicks)
    finally:
        server.stop()
    result["page_minus_engine_warm_s"] = round(result["page_segment_warm_s"] - result["engine_segment_warm_s"], 2)
    if args.worker_alone:
        result["worker"] = worker_alone(args.threads)
        result["page_minus_worker_cold_s"] = round(result["page_segment_cold_s"] - result["worker"]["cold_s"], 2)
        result["page_minus_worker_warm_s"] = round(result["page_segment_warm_s"] - result["worker"]["warm_s"], 2)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
