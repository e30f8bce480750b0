"""The warm worker under hostile input (issue 20, item 1): a protocol fuzz of `contrastseg serve --stdio` in its
own process. Every field of every op gets values of the wrong shape and type, lines come nested 100 000 deep,
as invalid UTF-8, too long, or as JSON that is not an object; after each, the worker answers a valid request.

Each bad line must get exactly one answer: ok false, one sentence naming the field, never "internal error".
The field table below is written independently of the worker's schema (serve_requests.SCHEMA), so a field the
schema forgets is still fuzzed here.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.serve_client import Client
from realdata import TS, needs_data, needs_default_model

pytestmark = [needs_data, needs_default_model()]
CT = TS / "example_ct_sm.nii.gz"

# the fields of each op (docs/worker.md) and what kind of value each takes; "?" = may be null
FIELDS = {
    "open": {"ct": "path", "model": "path?", "key": "key?"},
    "segment": {"ct": "key", "output": "path?", "coarse_output": "path?", "organs": "organs?", "coarse_only": "bool"},
    "refine": {"ct": "key", "organ": "organ", "labels": "path?", "output": "path?", "points_ras": "points",
               "neg_points_ras": "points", "box_ras": "box?", "scribble": "path?", "ignore_current": "bool"},
    "cancel": {"target": "ident"},
    "close": {"ct": "key"},
    "shutdown": {},
}
DEEP = [[[[[[[[[[[[[[[[[[[[["liver"]]]]]]]]]]]]]]]]]]]]]
TEXT_BAD = [5, 1.5, True, [], ["a"], {}, {"a": 1}, "", "a\u0000b", "\ud800", DEEP]
BAD = {
    "path": TEXT_BAD + ["x" * 5000],
    "key": TEXT_BAD + ["k" * 300],
    "bool": ["no", "yes", "true", 0, 1, [], {}, DEEP],
    "organs": ["liver", "liver,spleen", 6, [], ["heart"], [True], [["liver"]], [1.5], [""], [{}], ["liver,spleen"],
               DEEP, {"liver": 1}],
    "organ": [["liver"], "heart", "", "all", "liver,spleen", 0, 14, True, 1.5, {}, DEEP],
    "points": ["1,2,3", [1, 2, 3], [[1, 2]], [[1, 2, "3"]], [[1, 2, True]], [[1, 2, None]], [[0, 0, 0]] * 1001,
               {}, 5, DEEP],
    "box": [[1, 2, 3], "1,2,3,4,5,6", [1, 2, 3, 4, 5, "6"], [1, 2, 3, 4, 5, True], [1, 2, 3, 4, 5, 6, 7], 5, {}, DEEP],
    "ident": [[1], {"a": 1}, 1.5, True, "t" * 300, 10 ** 20, DEEP],
}


def fuzz_cases() -> list[tuple[str, dict, str]]:
    """(what, request without id, the text the answer must name) for every op, field and bad value."""
    cases = []
    for op, fields in FIELDS.items():
        base = {name: ("liver" if kind == "organ" else 7 if kind == "ident" else "k")
                for name, kind in fields.items() if not kind.endswith("?") and kind not in ("bool", "points")}
        for name, kind in fields.items():
            for value in BAD[kind.rstrip("?")]:
                cases.append((f"{op}.{name}={json.dumps(value)[:30]}", {"op": op, **base, name: value}, f"'{name}'"))
            if not kind.endswith("?") and kind not in ("bool", "points"):
                cases.append((f"{op} without {name}", {"op": op, **{k: v for k, v in base.items() if k != name}},
                              f"needs '{name}'"))
        cases.append((f"{op} with a misspelt field", {"op": op, **base, "ouput": "x.nii.gz"}, "no field 'ouput'"))
    return cases


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    c = Client(env=dict(os.environ, CONTRASTSEG_HOME=str(home)))
    c.command += ["--threads", "2"]
    yield c.start()
    c.stop()


def raw(client: Client, data: bytes) -> None:
    """Bytes as they come, past the client's text encoding (invalid UTF-8, a NUL, no line end yet)."""
    client.proc.stdin.flush()
    client.proc.stdin.buffer.write(data)
    client.proc.stdin.buffer.flush()


def still_answers(client: Client) -> None:
    """A valid request right after: the reader and the worker loop are both alive."""
    answer = client.request("close", ct="no-such-ct")
    assert answer["ok"] is False and "no open CT 'no-such-ct'" in answer["error"], answer


def one_sentence(answer: dict, must_name: str) -> None:
    error = answer.get("error", "")
    assert answer["ok"] is False and must_name in error, answer
    assert "internal error" not in error and "Traceback" not in error and "\n" not in error, answer


def test_every_field_of_every_op_refused_by_name(worker):
    cases = fuzz_cases()
    assert len(cases) > 200
    for n, (what, request, must_name) in enumerate(cases, start=1000):
        worker.send_line(json.dumps({"id": n, **request}))
        one_sentence(worker.answer(n, timeout=60), must_name)
        still_answers(worker)
    assert worker.proc.poll() is None


@pytest.mark.parametrize("line, must_name", [
    (b'{"id": 1, "op": ["open"]}', "unknown op"),  # it once killed the worker
    (b'{"op": 5}', "unknown op"),
    (b'{"op": "OPEN"}', "unknown op"),
    (b'{"id": "three"}', "unknown op"),
    (b'{"id": [1], "op": "close", "ct": "k"}', "'id'"),  # a list id killed the reader thread
    (b'{"id": {"a": 1}, "op": "close", "ct": "k"}', "'id'"),
    (b'{"id": true, "op": "close", "ct": "k"}', "'id'"),
    (b'{"id": 1.5, "op": "close", "ct": "k"}', "'id'"),
    (b'{"id": null, "op": "cancel", "target": [2]}', "'target'"),  # so did a list target
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # RecursionError is not a ValueError
    (b'{"id": 4, "op": "open", "ct": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
    (b'{"op": "open", "ct": "\xff\xfe.nii.gz"}', "not valid UTF-8"),  # killed a UTF-8 reader
    (b"\x00\x01\x02", "not a JSON request"),
    (b"\xef\xbb\xbf" + b'{"op": "open"}', "needs 'ct'"),  # a byte-order mark is text, not an error
    (b'{"op": "refine", "ct": "k", "organ": "liver", "points_ras": [[NaN, 0, 0]]}', "NaN is not a JSON number"),
    (b'{"op": "refine", "ct": "k", "organ": "liver", "points_ras": [[1e400, 0, 0]]}', "'points_ras'"),
    (b'{"op": "close", "ct": "k",', "not a JSON request"),
    (b"[]", "it is a list"), (b"5", "not a JSON request"), (b'"open"', "not a JSON request"), (b"null", "it is null"),
    (b'{"op": "close", "ct": "k"}' * 3, "not a JSON request"),
    (b'{"op": "close", "ct": "' + b"x" * (2 << 20) + b'"}', "longer than"),
], ids=lambda v: v[:24].decode("latin-1") if isinstance(v, bytes) else v)
def test_bad_lines_are_answered_and_the_worker_goes_on(worker, line, must_name):
    raw(worker, line + b"\r\n")
    rid = 1 if line.startswith(b'{"id": 1,') else "three" if line.startswith(b'{"id": "three"') else None
    answer = worker.answer(rid, timeout=60)  # under its id when that much was readable, else under null
    one_sentence(answer, must_name)
    still_answers(worker)


def test_a_line_cut_mid_utf8_and_blank_lines(worker):
    raw(worker, b"\n\n   \n" + '{"op": "open", "ct": "é'.encode()[:-1] + b'"}\n')
    one_sentence(worker.answer(None, timeout=60), "not valid UTF-8")
    still_answers(worker)


@pytest.fixture(scope="module")
def opened(worker, tmp_path_factory):
    """The CT open under key "k", and a BTCV label map of it (TotalSegmentator's ids mapped)."""
    from contrastseg.dataset import NAMED_ID_MAPS
    from contrastseg.io import read_image, read_labels, write_labels

    folder = tmp_path_factory.mktemp("labels")
    image = read_image(CT)
    labels = read_labels(TS / "example_seg.nii.gz", image, NAMED_ID_MAPS["totalsegmentator"])
    write_labels(labels, folder / "current.nii.gz", [1, 2, 3, 4, 6])
    assert worker.request("open", ct=str(CT), key="k")["ok"]
    return folder


@pytest.mark.parametrize("field, value, must_name", [
    ("ct", 5, "'ct'"), ("points_ras", "1,2,3", "'points_ras'"), ("output", 5, "'output'"),
    ("ignore_current", "no", "'ignore_current'"),  # "no" once counted as true and removed 32 530 liver voxels
    ("box_ras", [1, 2, 3], "'box_ras'"), ("organ", ["liver"], "'organ'"),
])
def test_wrong_types_in_a_real_refine_change_nothing(worker, opened, field, value, must_name):
    current, out = opened / "current.nii.gz", opened / f"out-{field}.nii.gz"
    before = current.read_bytes()
    request = {"ct": "k", "organ": "liver", "labels": str(current), "output": str(out), "points_ras": [[0.0, 0.0, 0.0]],
               field: value}
    one_sentence(worker.request("refine", **request), must_name)
    assert not out.exists() and current.read_bytes() == before


def test_organs_as_text_is_refused_not_read_letter_by_letter(worker, opened):
    one_sentence(worker.request("segment", ct="k", organs="liver", output=str(opened / "seg.nii.gz")), "'organs'")
    assert not (opened / "seg.nii.gz").exists()


def test_open_ct_count_is_bounded_and_outputs_are_checked_first(worker, opened):
    """A client cannot open CTs until the worker runs out of memory; an output of an unknown format is refused
    before anything is computed, not after."""
    from contrastseg.serve import MAX_OPEN_CTS

    keys = [f"extra{i}" for i in range(MAX_OPEN_CTS - 1)]  # "k" is open already
    assert all(worker.request("open", ct=str(CT), key=k)["ok"] for k in keys)
    one_sentence(worker.request("open", ct=str(CT), key="one-too-many"), f"{MAX_OPEN_CTS} CTs are open")
    assert worker.request("open", ct=str(CT), key="k")["ok"]  # reopening under a key in use replaces it
    assert all(worker.request("close", ct=k)["ok"] for k in keys)
    t0 = time.monotonic()
    one_sentence(worker.request("segment", ct="k", output=str(opened / "seg.png")), "unsupported extension")
    assert time.monotonic() - t0 < 30 and not (opened / "seg.png").exists()


def test_after_all_that_the_worker_still_segments_and_refines(worker, opened):
    """The end of the fuzz: a real segmentation and refinement on the CT opened before the bad lines."""
    out = opened / "coarse.nii.gz"
    seg = worker.request("segment", ct="k", output=str(out), organs=["liver", 2], coarse_only=True)
    assert seg["ok"] and seg["organs"] == [2, 6], seg
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(arr)) <= {0, 2, 6} and (arr == 6).sum() > 1000
    shutil.copy(out, opened / "copy.nii.gz")
    fixed = worker.request("refine", ct="k", organ="liver", labels=str(opened / "copy.nii.gz"),
                           neg_points_ras=[], points_ras=[], box_ras=None, ignore_current=False,
                           output=str(opened / "fixed.nii.gz"))
    assert fixed["ok"] is False and "at least one positive point" in fixed["error"]  # a sentence, not a crash
    assert worker.request("shutdown")["ok"] and worker.proc.wait(timeout=60) == 0
