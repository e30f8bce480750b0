"""The shape of every request of protocol `contrastseg-serve/1`, checked in one place before anything runs.

The warm worker faces whatever a client sends: a careless script, a web page, a fuzzer. Every line is read
here as bytes, decoded, parsed and checked against the op's schema (`SCHEMA`: each field's kind, whether it
is required, its default), and a bad line is answered with one sentence naming the field. The ops in
`serve.py` then get a complete dict of values of the right types (`organs` as BTCV ids, points as tuples,
booleans as real booleans: `"ignore_current": "no"` once counted as true and removed 32 530 liver voxels).

Why each rule:
- `id` and a cancel's `target` are a string or an integer (the worker keeps them in sets: a list killed its
  reader thread); a bad `id` is answered with `"id": null`.
- strings that name files hold no NUL byte and no lone surrogate (both raise deep inside `open`), and are at
  most MAX_PATH long;
- numbers are finite and not booleans (`true` is 1 to Python); lists are bounded (MAX_POINTS);
- a field the op does not know is refused (a misspelt `"ouput"` would otherwise silently write nothing);
- a line is at most MAX_LINE bytes, valid UTF-8, and JSON of bounded depth (a line nested 100 000 deep raised
  RecursionError, which is not a ValueError).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .errors import ContrastSegError

MAX_LINE = 1 << 20  # bytes in one request line
MAX_PATH = 4096
MAX_KEY = 256
MAX_POINTS = 1000
MAX_ID = 2 ** 53  # an integer id a JavaScript client can hold exactly


class BadRequest(ContrastSegError):
    """A line that is not a well-formed request; `rid` is its id when that much was readable, else None."""

    def __init__(self, message: str, rid=None):
        super().__init__(message)
        self.rid = rid


@dataclass
class Request:
    id: object
    op: str
    fields: dict


def _kind(value) -> str:
    """What a wrong value is, in a few words (the start of a string or number, never the whole of a huge one)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"the number {text[:20]}{'...' if len(text) > 20 else ''}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}{'...' if len(value) > 40 else ''}" if value else "an empty text"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object"


class Invalid(Exception):
    """A field value that does not fit (the caller names the field)."""


def _text(value, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise Invalid()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"), valid JSON but no file name
        raise Invalid() from None
    return value


def path(value) -> str:
    return _text(value, MAX_PATH)


def key(value) -> str:
    return _text(value, MAX_KEY)


def ident(value):
    if isinstance(value, bool) or not (isinstance(value, str) and len(value) <= MAX_KEY
                                       or isinstance(value, int) and abs(value) <= MAX_ID):
        raise Invalid()
    return value


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise Invalid()
    return value


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid()
    try:
        value = float(value)
    except OverflowError:  # an integer of 400 digits
        raise Invalid() from None
    if not math.isfinite(value):
        raise Invalid()
    return value


def point(value) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise Invalid()
    return tuple(_number(v) for v in value)


def points(value) -> list[tuple[float, float, float]]:
    if not isinstance(value, list) or len(value) > MAX_POINTS:
        raise Invalid()
    return [point(v) for v in value]


def box(value) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != 6:
        raise Invalid()
    return tuple(_number(v) for v in value)


def _one_organ(value) -> int:
    from .organs import parse_organs

    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip().lower() in ("", "all"):
        raise Invalid()
    try:
        found = parse_organs(str(value))
    except ValueError:
        raise Invalid() from None
    if len(found) != 1:
        raise Invalid()
    return found[0]


def organ(value) -> int:
    return _one_organ(value)


def organs(value) -> list[int] | None:
    if not isinstance(value, list) or not value or len(value) > 64:
        raise Invalid()
    if len(value) == 1 and isinstance(value[0], str) and value[0].strip().lower() == "all":
        return None  # every organ the model covers, as the CLI's --organs all
    return sorted({_one_organ(v) for v in value})


REQUIRED = object()
ORGAN_RULE = "an organ name such as 'liver' or its BTCV id 1-13"
# op -> field -> (check, default or REQUIRED, what it must be)
SCHEMA: dict[str, dict[str, tuple]] = {
    "open": {"ct": (path, REQUIRED, "the path of a CT file or DICOM folder"),
             "model": (path, None, "a model name or folder, or null for the default model"),
             "key": (key, None, f"a text of 1-{MAX_KEY} characters naming the CT, or null")},
    "segment": {"ct": (key, REQUIRED, "the key of an open CT (open answers it)"),
                "output": (path, None, "a file path, or null"),
                "coarse_output": (path, None, "a file path, or null"),
                "organs": (organs, None, f"a list of organs, each {ORGAN_RULE}, or null for all"),
                "coarse_only": (boolean, False, "true or false")},
    "refine": {"ct": (key, REQUIRED, "the key of an open CT (open answers it)"),
               "organ": (organ, REQUIRED, f"one organ: {ORGAN_RULE}"),
               "labels": (path, None, "a label map path, or null for the last segmentation"),
               "output": (path, None, "a file path, or null"),
               "points_ras": (points, [], f"a list of up to {MAX_POINTS} points [x, y, z] in RAS mm"),
               "neg_points_ras": (points, [], f"a list of up to {MAX_POINTS} points [x, y, z] in RAS mm"),
               "box_ras": (box, None, "6 numbers [x0, y0, z0, x1, y1, z1] in RAS mm, or null"),
               "scribble": (path, None, "the path of a mask on the CT's grid, or null"),
               "ignore_current": (boolean, False, "true or false"),
               "output_box": (boolean, False, "true or false")},
    "cancel": {"target": (ident, REQUIRED, "the id of a request (a text or an integer)")},
    "close": {"ct": (key, REQUIRED, "the key of an open CT")},
    "shutdown": {},
}


def parse_line(raw: bytes | None) -> dict:
    """A request line (bytes, without its line end) as a JSON object; BadRequest (id null) otherwise."""
    if raw is None:
        raise BadRequest(f"a request line is longer than {MAX_LINE} bytes; it was skipped")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"a request line is not valid UTF-8 text (byte {err.start}); requests are JSON in UTF-8") from None

    def no_constant(name):  # NaN and Infinity are not JSON, though Python's parser takes them
        raise ValueError(f"{name} is not a JSON number")

    try:
        req = json.loads(text.lstrip("\ufeff"), parse_constant=no_constant)
    except RecursionError:
        raise BadRequest("a request line is nested too deeply to be a request") from None
    except ValueError as err:
        raise BadRequest(f"not a JSON request object ({err}): {text.strip()[:80]}") from None
    if not isinstance(req, dict):
        raise BadRequest(f"not a JSON request object (it is {_kind(req)}): {text.strip()[:80]}")
    return req


def check_request(req: dict) -> Request:
    """The request's id, op and complete, typed fields; BadRequest naming the first field that does not fit."""
    rid = req.get("id")
    if rid is not None:
        try:
            ident(rid)
        except Invalid:
            raise BadRequest(f"'id' must be a text of up to {MAX_KEY} characters, an integer or null "
                             f"(got {_kind(rid)})") from None
    op = req.get("op")
    if not isinstance(op, str) or op not in SCHEMA:
        shown = repr(op) if isinstance(op, str) else _kind(op)
        raise BadRequest(f"unknown op {shown[:60]}; ops: {sorted(SCHEMA)}", rid)
    schema = SCHEMA[op]
    unknown = sorted(k for k in req if k not in schema and k not in ("id", "op"))
    if unknown:
        raise BadRequest(f"{op} has no field {unknown[0][:60]!r}; its fields: {sorted(schema) or 'none'}", rid)
    fields = {}
    for name, (check, default, rule) in schema.items():
        value = req.get(name)
        if value is None:
            if default is REQUIRED:
                raise BadRequest(f"{op} needs '{name}': {rule}", rid)
            fields[name] = list(default) if isinstance(default, list) else default
            continue
        try:
            fields[name] = check(value)
        except Invalid:
            raise BadRequest(f"'{name}' of {op} must be {rule} (got {_kind(value)})", rid) from None
    return Request(rid, op, fields)


def read_lines(stream, limit: int = MAX_LINE):
    """Each line of `stream` as bytes without its line end; None for a line over `limit` bytes (the rest of
    it is read and dropped, never held in memory). Takes a text stream's binary buffer, so an invalid byte is
    refused by `parse_line` instead of killing a UTF-8 reader."""
    source = getattr(stream, "buffer", stream)
    while True:
        line = source.readline(limit + 1)
        if isinstance(line, str):  # a text stream without a buffer (tests)
            line = line.encode("utf-8", "surrogatepass")
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = source.readline(limit + 1)
            yield None
            continue
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line
