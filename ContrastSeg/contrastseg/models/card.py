"""A model card is data from a file: every field a network, a grid or a list of models reads is checked here,
before any network is built from it. Torch-free, so the store, `models list` and a run plan (Slicer's GUI
process) check cards without loading torch.

Why before: a card with negative widths made torch raise a RuntimeError deep inside a constructor, and one
with huge widths allocated 7 GB on its way to failing. A card's sizes are bounded here (a channel width of at
most MAX_WIDTH, at most MAX_LEVELS U-Net levels, voxel spacings in the CT range), and `files.load_model`
then compares the network the card describes with the tensor shapes in the weights file's header before it
allocates anything.

Each problem is one sentence naming the card and the field, e.g. "model card X: refined.widths must be 4
whole numbers from 1 to 2048 (got [-8, 16, 32, 64])".
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import ContrastSegError
from ..organs import BY_ID

CARD_FORMAT = "contrastseg-model/1"
# models.refined.DEPTHS and STEMS (importing them would import torch); a test keeps the two equal
REFINED_DEPTHS = (10, 18, 34, 50, 101)
REFINED_STEMS = ("authors", "paper", "stride2")
MAX_WIDTH = 2048  # channels of one layer; the default model's widest is 256
MAX_LEVELS = 6  # coarse U-Net levels (the coarse grid must be divisible by 2 ** (levels - 1))
SPACING_MM = (0.1, 20.0)  # a working grid's voxel size: the CT checks accept 0.1-10 mm voxels
COARSE_INPUTS = ("image", "lateral")  # inputs.COARSE_INPUTS (importing inputs would import numpy: a test keeps them equal)
SCAN_TOP_MODES = ("as-is", "repeat-below-diaphragm")  # scan_ends.SCAN_TOP_MODES, kept equal the same way
INTENSITY_MODES = ("percentile", "soft-top")  # preprocess.INTENSITY_MODES, likewise


class CardError(ContrastSegError):
    """A model card that cannot describe a usable model."""


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value, low: float, high: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _weights_name(where: str, stage: str, settings: dict) -> None:
    name = settings.get("weights")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors") or "\0" in name:
        raise CardError(f"model card {where} names the {stage} weights {name!r}; it must be the name of a "
                        ".safetensors file in the model folder")
    sha = settings.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise CardError(f"model card {where}: {stage}.sha256 must be 64 hexadecimal digits (got {sha!r:.80})")


def _check(where: str, ok: bool, field: str, rule: str, value) -> None:
    if not ok:
        shown = repr(value)
        raise CardError(f"model card {where}: {field} must be {rule} (got {shown[:80]}{'...' if len(shown) > 80 else ''})")


def _check_coarse(where: str, c) -> None:
    _check(where, isinstance(c, dict), "coarse", "a table of the coarse network's settings", c)
    _check(where, c.get("architecture") == "CoarseUNet", "coarse.architecture", "'CoarseUNet'", c.get("architecture"))
    ch = c.get("channels")
    _check(where, isinstance(ch, list) and 2 <= len(ch) <= MAX_LEVELS and all(_whole(v, 1, MAX_WIDTH) for v in ch),
           "coarse.channels", f"2 to {MAX_LEVELS} whole numbers from 1 to {MAX_WIDTH}", ch)
    sp = c.get("spacing")
    _check(where, isinstance(sp, list) and len(sp) == 3 and all(_number(v, *SPACING_MM) for v in sp),
           "coarse.spacing", f"3 voxel sizes from {SPACING_MM[0]:g} to {SPACING_MM[1]:g} mm", sp)
    inputs = c.get("inputs", ["image"])
    _check(where, isinstance(inputs, list) and inputs[:1] == ["image"] and len(set(inputs)) == len(inputs)
           and all(i in COARSE_INPUTS for i in inputs), "coarse.inputs",
           f"a list starting with 'image', from {list(COARSE_INPUTS)}", inputs)
    _check(where, c.get("scan_top", "as-is") in SCAN_TOP_MODES, "coarse.scan_top", f"one of {list(SCAN_TOP_MODES)}",
           c.get("scan_top"))
    _weights_name(where, "coarse", c)


def check_refined(r, where: str) -> None:
    """The refined network's settings (a card's `refined`, or what a run will train): CardError if unusable."""
    _check_refined(where, r)


def _check_refined(where: str, r) -> None:
    _check(where, isinstance(r, dict), "refined", "a table of the refined network's settings", r)
    _check(where, r.get("architecture") == "RefinedNet", "refined.architecture", "'RefinedNet'", r.get("architecture"))
    _check(where, r.get("depth") in REFINED_DEPTHS and not isinstance(r.get("depth"), bool), "refined.depth",
           f"one of {list(REFINED_DEPTHS)}", r.get("depth"))
    w = r.get("widths")
    _check(where, isinstance(w, list) and len(w) == 4 and all(_whole(v, 1, MAX_WIDTH) for v in w), "refined.widths",
           f"4 whole numbers from 1 to {MAX_WIDTH}", w)
    _check(where, r.get("stem") in REFINED_STEMS, "refined.stem", f"one of {list(REFINED_STEMS)}", r.get("stem"))
    _check(where, _whole(r.get("aspp_width"), 1, MAX_WIDTH), "refined.aspp_width", f"a whole number from 1 to {MAX_WIDTH}",
           r.get("aspp_width"))
    _check(where, isinstance(r.get("skip", True), bool), "refined.skip", "true or false", r.get("skip"))
    optional = (("inplane_spacing", lambda v: _number(v, 0.1, 10.0), "a voxel size from 0.1 to 10 mm"),
                ("patch", lambda v: _whole(v, 16, 4096), "a whole number of pixels from 16 to 4096"),
                ("margin", lambda v: _whole(v, 0, 1024), "a whole number of pixels from 0 to 1024"),
                ("prompt_value", lambda v: _number(v, -1e3, 1e3), "a number"))
    for key, ok, rule in optional:
        if key in r:
            _check(where, ok(r[key]), f"refined.{key}", rule, r[key])
    _weights_name(where, "refined", r)


def _check_shown(where: str, card: dict) -> None:
    """The fields `models list` and the Slicer model table show: text and numbers of the right kind."""
    for key in ("name", "created", "version"):
        if key in card:
            value = card[key]
            _check(where, value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)), key,
                   "text", value)
    val = card.get("validation")
    if val is None:
        return
    _check(where, isinstance(val, dict), "validation", "a table", val)
    for key in ("model", "base"):
        part = val.get(key)
        _check(where, part is None or isinstance(part, dict), f"validation.{key}", "a table or null", part)
        dice = (part or {}).get("mean_dice")
        _check(where, dice is None or _number(dice, 0.0, 1.0), f"validation.{key}.mean_dice", "a number from 0 to 1 or null",
               dice)


def check_card(card, where: str) -> dict:
    """Refuse (CardError, one sentence) a card that is not a ContrastSeg model card with usable settings."""
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CardError(f"{where} is not a ContrastSeg model card (format must be '{CARD_FORMAT}')")
    organs = card.get("organs")
    if (not isinstance(organs, list) or not organs or any(isinstance(o, bool) or o not in BY_ID for o in organs)
            or len(set(organs)) != len(organs)):
        raise CardError(f"model card {where} lists organs {str(organs)[:80]}, which are not BTCV organ ids 1-13")
    if card.get("coarse") is None:
        raise CardError(f"model card {where} has no coarse network (its 'coarse' settings are missing)")
    _check_coarse(where, card["coarse"])
    pre = card.get("preprocessing") or {}
    _check(where, isinstance(pre, dict) and pre.get("intensity", "percentile") in INTENSITY_MODES,
           "preprocessing.intensity", f"one of {list(INTENSITY_MODES)}", pre.get("intensity") if isinstance(pre, dict) else pre)
    if card.get("refined") is not None:
        _check_refined(where, card["refined"])
    _check_shown(where, card)
    return card
