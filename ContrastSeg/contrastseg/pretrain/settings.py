"""Pretraining settings: one dataclass for every strategy, written to the run's config.json.

Importable without torch (the CLI builds its options from it and must start fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..organs import BY_ID
from ..train.settings import CoarseSettings, RefinedSettings

STRATEGY_NAMES = ("simclr", "supcon-mt", "dcc", "ce", "voxel-simsiam", "polycl-o", "polycl-s", "separeg")

DEFAULT_TEMPERATURE = {"simclr": 0.1, "supcon-mt": 0.1, "dcc": 0.07}


@dataclass
class PretrainSettings:
    strategy: str = "simclr"
    steps: int = 300
    max_steps: int | None = None  # caps every phase (smoke runs)
    batch: int = 16  # patches (or triplets, regions) per rank per step; each gives 2 views where the method has 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    temperature: float | None = None  # None: the method's own (SimCLR/SupCon 0.1, DCC 0.07; PolyCL 1/batch)
    seed: int = 0
    epoch_steps: int | None = None  # checkpoint interval; None: one pass over the sampled items
    # the refined encoder (must match the fine-tuning network; defaults are RefinedSettings')
    depth: int = RefinedSettings.depth
    widths: tuple[int, ...] = RefinedSettings.widths
    stem: str = RefinedSettings.stem
    inplane_spacing: float = RefinedSettings.inplane_spacing
    patch: int = RefinedSettings.patch
    organs: list[int] = field(default_factory=lambda: sorted(BY_ID))
    partial_weight: float = 0.0  # AGCL "partial positives" (same phase, other organ); 0 = Eq. 3 as written
    # PolyCL
    target_organ: int | None = None  # None: the organ that best splits the central slices (`balanced_organ`)
    slice_size: int = 256
    slice_fraction: float = 0.3
    # SepaReg
    clusters: int = 5
    region_slices: int = 16
    max_regions: int | None = 1024
    slic_segments: int = 32
    slic_compactness: float = 15.0
    slic_sigma: float = 0.8
    distill_temperature: float = 0.1
    # voxel-level Siamese learning (coarse 3D U-Net)
    coarse_channels: tuple[int, ...] = CoarseSettings.channels
    coarse_crop: tuple[int, int, int] = CoarseSettings.crop
    coarse_spacing: tuple[float, float, float] = CoarseSettings.spacing
    coarse_batch: int = CoarseSettings.batch
    voxel_weight: float = 10.0  # lambda: 10 with three layers (METHODS §3)
    voxel_layers: int = 3
    max_voxels: int = 1700
    max_false_negatives: int = 1000
    # embedding plot
    probe: int = 256
    init: str | None = None  # a model folder: continue pretraining from its networks (the loop) instead of random
    # how the networks see a CT (inputs.InputSpec); with `init`, that model's card decides
    intensity: str = CoarseSettings.intensity
    coarse_inputs: tuple[str, ...] = CoarseSettings.inputs

    def input_spec(self):
        """The intensity mode and coarse inputs to pretrain with: the `init` model's, else these settings'."""
        from ..inputs import InputSpec

        if self.init:
            from ..models.files import read_card

            return InputSpec.of(read_card(self.init))
        return InputSpec(self.intensity, tuple(self.coarse_inputs))

    def capped(self, steps: int) -> int:
        return max(1, min(steps, self.max_steps)) if self.max_steps else max(1, steps)

    def tau(self) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE.get(self.strategy, 0.1)
