"""The coarse-to-fine segmentation pipeline (METHODS.md §1): coarse 3D U-Net, organ attention, refined 2D
network per organ, vote fusion, and resampling back onto the input's own grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .errors import ContrastSegError
from .heap import release_free_memory
from .io import check_ct
from .models.files import Model
from .organs import NUM_CLASSES
from .inputs import InputSpec, coarse_input
from .preprocess import inplane_spacing, labels_onto, prepare, resample_like
from .progress import Progress
from .scan_ends import coarse_padding

MAX_WHOLE_VOLUME = 192 ** 3  # coarse voxels run in one pass; larger volumes go through a sliding window
REFINE_BATCH = 16
REFINE_PIXELS = 1 << 18  # on a CPU the batch runs in chunks of this many pixels: activations stay ~0.2 GB, and
# smaller chunks are no slower there (measured: 16 slices of 208x208 took 1.07 s at once, 0.82 s in fours)


@dataclass
class Segmentation:
    """Label maps on the input grid (uint8 sitk images), the organs covered, per-stage wall times (s), and
    notes for the user on how the CT was run (e.g. its top repeated: scan_ends.py)."""

    labels: sitk.Image
    coarse: sitk.Image
    organs: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ContrastSegError("--device cuda was asked for, but no CUDA GPU is available to torch here")
    if name not in ("cpu", "cuda"):
        raise ContrastSegError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def _pad_to(arr: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last 3 (or 2) dims of `arr` up to multiples of `divisor` at the far end; returns the old sizes."""
    sizes = tuple(arr.shape[-3:]) if arr.dim() == 5 else tuple(arr.shape[-2:])
    pads = []
    for s in reversed(sizes):
        pads += [0, (-s) % divisor]
    return torch.nn.functional.pad(arr, pads), sizes


@torch.inference_mode()
def coarse_probabilities(net, volume: np.ndarray, device: torch.device, allowed: list[int], progress: Progress | None = None,
                         competing: list[int] | None = None, pad_ends: int | tuple[int, int] = 0) -> np.ndarray:
    """Softmax of the coarse net on its input (channels, z, y, x: inputs.coarse_input; a bare (z, y, x) volume
    is the image alone) over background + the `competing` organs (default: `allowed`), the probability of a
    competing organ not `allowed` then counted as background; (C, z, y, x) float32. So an organ left out (not
    asked for, or not listed by the model's card) keeps its voxels from the organs asked for.

    `pad_ends` repeats the bottom (inferior) and top slices that many times before the network runs (and drops
    them after): one number for both ends, or (bottom, top); the network then sees no end of the scan there.
    It keeps a scan that starts at the kidneys from having its topmost organs named liver and spleen; the
    default model's card asks for the top repeated on such a scan only (scan_ends.py, docs/default-model.md)."""
    competing = sorted(set(competing or []) | set(allowed))
    volume = volume if volume.ndim == 4 else volume[None]
    below, above = (pad_ends, pad_ends) if np.isscalar(pad_ends) else pad_ends
    if below or above:
        volume = np.pad(volume, ((0, 0), (below, above), (0, 0), (0, 0)), mode="edge")
    x = torch.from_numpy(volume)[None].to(device)
    mask = torch.full((NUM_CLASSES,), float("-inf"), device=device)
    mask[[0, *competing]] = 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if x[0, 0].numel() <= MAX_WHOLE_VOLUME:
        padded, sizes = _pad_to(x, net.divisor)
        with autocast:
            logits = net(padded)[..., : sizes[0], : sizes[1], : sizes[2]]
    else:
        from monai.inferers import sliding_window_inference

        with autocast:
            logits = sliding_window_inference(x, (128, 128, 128), 2, net, overlap=0.25, mode="gaussian")
    if progress:
        progress.update(1.0)
    probs = torch.softmax(logits.float() + mask[None, :, None, None, None], dim=1)[0]
    probs = probs[:, below: probs.shape[1] - above]
    left_out = [o for o in competing if o not in allowed]
    if left_out:
        probs[0] += probs[left_out].sum(0)
        probs[left_out] = 0.0
    return probs.cpu().numpy()


def clean_components(labels: np.ndarray, organs: list[int], keep_fraction: float = 0.2) -> np.ndarray:
    """Drop each organ's connected components smaller than `keep_fraction` of its largest one.

    A coarse model's stray specks would otherwise stretch an organ's attention box across the volume (and
    the refined stage's cost with it); an organ in two large pieces keeps both.
    """
    out = labels.copy()
    for organ in organs:
        mask = labels == organ
        if not mask.any():
            continue
        cc, n = ndimage.label(mask)
        if n < 2:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        small = np.nonzero(sizes < keep_fraction * sizes.max())[0] + 1
        out[np.isin(cc, small)] = 0
    return out


def _probs_to_grid(probs: np.ndarray, grid: sitk.Image, target: sitk.Image, channels: list[int]) -> np.ndarray:
    """Linear resampling of selected probability channels from `grid` to `target`; then argmax -> labels.

    A running argmax, one channel at a time: memory is two target-sized arrays whatever the number of
    organs. A later channel wins only where it is strictly larger, so ties go to the first, as np.argmax.
    """
    shape = tuple(reversed(target.GetSize()))
    best = np.full(shape, -np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    for c in channels:
        img = sitk.GetImageFromArray(probs[c])
        img.CopyInformation(grid)
        moved = resample_like(img, target, sitk.sitkLinear, 1.0 if c == 0 else 0.0)
        p = sitk.GetArrayViewFromImage(moved)
        wins = p > best
        labels[wins] = c
        np.copyto(best, p, where=wins)
        del p, moved
    return labels


def _bbox(mask: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[slice, slice, slice]:
    zs, ys, xs = np.nonzero(mask)
    return (slice(zs.min(), zs.max() + 1),
            slice(max(0, ys.min() - margin), min(shape[0], ys.max() + 1 + margin)),
            slice(max(0, xs.min() - margin), min(shape[1], xs.max() + 1 + margin)))


@torch.inference_mode()
def refine(net, image: np.ndarray, attention: np.ndarray, organs: list[int], device: torch.device,
           margin: int = 16, progress: Progress | None = None) -> np.ndarray:
    """Organ-attention refinement with vote fusion (METHODS §1.3-1.5), on one grid; returns (z, y, x) labels.

    For each organ C, each axial slice holding C's attention is one fully convolutional patch: the box of C's
    attention (plus `margin` pixels) over a batch of up to REFINE_BATCH such slices: input (image, attention == C), output foreground/background. Inside its
    patch the organ votes +1 for foreground and -1 for background; background has a constant 0 and wins ties
    (the argmax takes the first maximum, and background is first).
    """
    best = np.zeros(image.shape, dtype=np.int8)  # the winning vote so far; background's constant 0 first
    labels = np.zeros(image.shape, dtype=np.uint8)
    present = [c for c in organs if np.any(attention == c)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    total_slices = sum(int(np.any(attention == c, axis=(1, 2)).sum()) for c in present) or 1
    done = 0
    for c in present:
        att = attention == c
        z_idx = np.nonzero(att.any(axis=(1, 2)))[0]
        box = _bbox(att, margin, image.shape[1:])  # this organ's votes live in its box only
        votes = np.zeros((box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start), np.int8)
        for start in range(0, len(z_idx), REFINE_BATCH):
            zb = z_idx[start:start + REFINE_BATCH]
            # the box of these slices only: an organ's cross-section changes a lot along z
            _, ysl, xsl = _bbox(att[zb], margin, image.shape[1:])
            x = np.stack([image[zb, ysl, xsl], att[zb, ysl, xsl].astype(np.float32)], axis=1)
            xt, sizes = _pad_to(torch.from_numpy(x).to(device), net.divisor)
            fg = _foreground(net, xt, device, autocast)[:, : sizes[0], : sizes[1]]
            votes[(zb - box[0].start)[:, None, None], np.arange(ysl.start, ysl.stop)[None, :, None] - box[1].start,
                  np.arange(xsl.start, xsl.stop)[None, None, :] - box[2].start] = np.where(fg, 1, -1)
            done += len(zb)
            if progress:
                progress.update(done / total_slices, f"organ {c}")
        # fusion (METHODS §1.5), one organ at a time: a strictly larger vote wins, so ties keep the earlier
        # label (background first, then organs in order), as an argmax over all the votes would
        region = best[box]
        wins = votes > region
        region[wins] = votes[wins]
        labels[box][wins] = c
        release_free_memory()  # one organ's activations, of many patch sizes, would otherwise stay in the heap
    return labels


def _foreground(net, x: torch.Tensor, device: torch.device, autocast) -> np.ndarray:
    """The refined network's foreground mask for a batch of patches (B, 2, H, W); on a CPU in chunks of
    REFINE_PIXELS (the network is per-sample in eval mode, so the result is the same as in one pass)."""
    chunk = len(x) if device.type == "cuda" else max(1, REFINE_PIXELS // (x.shape[-1] * x.shape[-2]))
    out = []
    for i in range(0, len(x), chunk):
        with autocast:
            logits = net(x[i:i + chunk])
        out.append((logits[:, 1] > logits[:, 0]).cpu().numpy())
        del logits
    return np.concatenate(out)


def segment(image: sitk.Image, model: Model, organs: list[int] | None = None, refined: bool = True,
            device: torch.device | None = None, progress: Progress | None = None, on_coarse=None,
            pad_ends: int | tuple[int, int] | None = None) -> Segmentation:
    """Segment a CT (any orientation, HU) with `model`; the result overlays `image` voxel for voxel.

    `pad_ends` (coarse slices repeated at the bottom and top, infer.coarse_probabilities) is by default what
    the model's card asks for: the top repeated on a scan that starts below the diaphragm (scan_ends.py).

    `on_coarse(labels)` is called with the coarse label map (on the input grid) as soon as it exists, so a
    viewer can show it while the refined stage runs.
    """
    device = device or pick_device()
    organs = sorted(organs or model.organs)
    model.check_covers(organs)
    if refined and model.refined is None:
        raise ContrastSegError(f"model '{model.card.get('name')}' has no refined network; use --coarse-only")
    check_ct(image)
    timings = {}
    prog = progress or Progress("none")

    t = time.perf_counter()
    prog.begin("preprocess", "resampling to the coarse grid")
    spec = InputSpec.of(model.card)
    low = prepare(image, tuple(model.card["coarse"]["spacing"]), spec.intensity)
    inputs = coarse_input(low.array, low.grid.GetSpacing()[0], spec)
    timings["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    notes = []
    if pad_ends is None:
        pad_ends = coarse_padding(image, low.grid, spec.scan_top)
        if pad_ends[1]:
            notes.append(f"The scan starts below the diaphragm (no lung at its top): the coarse network saw its top "
                         f"slice repeated {pad_ends[1] * low.grid.GetSpacing()[2]:.0f} mm.")
    prog.begin("coarse", "3D U-Net" + (", the scan's top repeated" if notes else ""))
    probs, coarse_low = coarse_stage(model.coarse, inputs, organs, device, prog, model.competing, pad_ends)
    del inputs
    coarse = _to_input_grid(coarse_low, low.grid, image)
    release_free_memory()  # the U-Net's activations
    timings["coarse"] = time.perf_counter() - t
    if on_coarse is not None:
        on_coarse(coarse)
    if not refined:
        return Segmentation(coarse, coarse, organs, timings, notes)

    t = time.perf_counter()
    prog.begin("refine", "organ-attention network")
    rset = model.card["refined"]
    if not coarse_low.any():
        timings["refine"] = time.perf_counter() - t
        return Segmentation(coarse, coarse, organs, timings, notes)
    fine = prepare(image, inplane_spacing(image, rset["inplane_spacing"]), spec.intensity)
    attention = _probs_to_grid(probs, low.grid, fine.grid, [0, *organs])
    del probs, low  # the coarse grid's probabilities (one float32 volume per organ) are not needed any more
    timings["attention"] = time.perf_counter() - t
    rnet = model.refined.to(device)
    fine_labels = refine(rnet, fine.array, attention, organs, device, rset.get("margin", 16), prog)
    labels = _to_input_grid(fine_labels, fine.grid, image)
    labels = _one_main_piece(labels, [o for o in SOLID_ORGANS if o in organs])
    timings["refine"] = time.perf_counter() - t
    return Segmentation(labels, coarse, organs, timings, notes)


# spleen, kidneys, liver: one solid piece each. A piece under half the size of the organ's largest is dropped
# (set to background) from the final map; an organ cut into two comparable halves keeps both. Measured with the
# shipped model on every CT at hand (docs/default-model.md): IRCAD's right kidney had a 52 789-voxel second
# piece in the liver (Dice 0.795 -> 0.904); no organ on any other CT lost Dice (0 to +0.007).
SOLID_ORGANS = (1, 2, 3, 6)
MAIN_PIECE_FRACTION = 0.5


def _one_main_piece(labels: sitk.Image, organs: list[int]) -> sitk.Image:
    """`clean_components` at MAIN_PIECE_FRACTION for `organs`, each organ labelled within its own bounding box
    (a CT-sized pass per organ would add a second to a 512x512 CT)."""
    arr = sitk.GetArrayFromImage(labels)
    boxes = ndimage.find_objects(arr)
    changed = False
    for organ in organs:
        box = boxes[organ - 1] if organ - 1 < len(boxes) else None
        if box is None:
            continue
        sub = arr[box]
        cleaned = clean_components(sub, [organ], MAIN_PIECE_FRACTION)
        if not np.array_equal(cleaned, sub):
            arr[box] = cleaned
            changed = True
    if not changed:
        return labels
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    return out


def coarse_stage(net, volume: np.ndarray, organs: list[int], device: torch.device,
                 progress: Progress | None = None, competing: list[int] | None = None,
                 pad_ends: int | tuple[int, int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """The coarse network on its input (inputs.coarse_input): (probabilities, cleaned label map), on its grid.

    The probabilities of the specks `clean_components` removed are set to 0, so the attention that follows
    (inference, and the loop's refined training) sees the cleaned map.
    """
    probs = coarse_probabilities(net.to(device), volume, device, organs, progress, competing, pad_ends)
    raw = probs[[0, *organs]].argmax(0)
    coarse_low = clean_components(np.asarray([0, *organs], dtype=np.uint8)[raw], organs)
    for c in organs:
        probs[c][(coarse_low != c) & (raw == organs.index(c) + 1)] = 0.0
    return probs, coarse_low


def coarse_attention(image: sitk.Image, model: Model, organs: list[int], grid: sitk.Image,
                     device: torch.device) -> np.ndarray:
    """The attention label map the refined network gets at inference, on `grid` (e.g. a training case's
    refined grid): what the loop's refined stage trains on besides the perturbed truth."""
    spec = InputSpec.of(model.card)
    low = prepare(image, tuple(model.card["coarse"]["spacing"]), spec.intensity)
    probs, coarse_low = coarse_stage(model.coarse, coarse_input(low.array, low.grid.GetSpacing()[0], spec), organs, device,
                                     competing=model.competing, pad_ends=coarse_padding(image, low.grid, spec.scan_top))
    if not coarse_low.any():
        return np.zeros(tuple(reversed(grid.GetSize())), dtype=np.uint8)
    return _probs_to_grid(probs, low.grid, grid, [0, *organs])


def _to_input_grid(labels: np.ndarray, grid: sitk.Image, image: sitk.Image) -> sitk.Image:
    out = labels_onto(labels, grid, image)
    out.CopyInformation(image)
    return out
