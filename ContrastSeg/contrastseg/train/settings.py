"""Training settings of both stages, importable without torch (the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..organs import BY_ID


@dataclass
class CoarseSettings:
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    channels: tuple[int, ...] = (8, 16, 32, 64)  # light: about 1 s per training step on 2 CPU threads
    crop: tuple[int, int, int] = (48, 80, 80)  # z, y, x voxels of the coarse grid
    batch: int = 2
    steps: int = 1200
    lr: float = 2e-3
    seed: int = 0
    foreground_fraction: float = 0.7
    augment: bool = True  # spatial, contrast-phase, scanner and field-of-view augmentation (train/crops.py)
    phase: float = 0.8  # share of crops whose structures get a random contrast phase (phases.py)
    fov: float = 0.3  # share of crops in which the scan's field of view ends
    fov_plane: str = "scan"  # a z end anywhere in the scan's height, or "crop": inside the crop (crops.CropAugment)
    ends: str = "air"  # beyond a z end: "air", or "edge", the end slice repeated (crops.CropAugment)
    scan_top: str = "as-is"  # the card's coarse.scan_top (scan_ends.py); a base model's card decides it when fine-tuning
    # what the network takes (a base model's card decides these when fine-tuning; inputs.py)
    intensity: str = "soft-top"
    inputs: tuple[str, ...] = ("image", "lateral")
    # TotalSegmentator segmentations/ folders without a CT: CTs painted from their labels (crops.painted_source)
    painted: list[str] = field(default_factory=list)
    painted_share: float = 0.25
    # neighbours the organs are confused with on other hospitals' CTs, in TotalSegmentator ids (51: the heart,
    # called liver above the diaphragm): a share of crops is centred on one, where a source names it; they stay
    # background (a crop teaches what the organs are not)
    context: list[int] = field(default_factory=list)
    context_share: float = 0.1
    organs: list[int] = field(default_factory=lambda: sorted(BY_ID))
    # fine-tuning from a base model (the loop, METHODS §9); both need the base, and are off without one
    replay: float = 1 / 3  # share of each batch drawn from the base model's own training cases, where found
    distill: float = 1.0  # weight of the distillation toward the base on organs an entry does not annotate


@dataclass
class RefinedSettings:
    inplane_spacing: float = 1.5
    patch: int = 128
    depth: int = 18
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem: str = "stride2"
    aspp_width: int = 128
    skip: bool = True
    batch: int = 16
    steps: int = 1000
    lr: float = 1e-3
    seed: int = 0
    freeze_encoder: bool = False
    margin: int = 16
    # the loop: where the attention channel comes from while training, and the base's cases mixed in
    coarse_attention: float = 0.5  # share of patches whose attention is the coarse network's output (else: the
    #                                perturbed truth); only when the base model's coarse network is at hand
    replay: float = 1 / 3
    prompts: float = 0.0  # share of patches whose attention is prompt-like (hints.prompt_attention), drawn first
    augment: bool = False  # random scale and intensity jitter of each patch (patches.sample_patch)
    keep: float = 0.0  # weight of distillation toward the starting network on the patches without prompts, so
    #                    learning prompts does not change how it answers a coarse mask (0: off)
    organs: list[int] = field(default_factory=lambda: sorted(BY_ID))

    def card(self) -> dict:
        return {"architecture": "RefinedNet", "depth": self.depth, "widths": list(self.widths), "stem": self.stem,
                "aspp_width": self.aspp_width, "skip": self.skip, "inplane_spacing": self.inplane_spacing,
                "patch": self.patch, "margin": self.margin}
