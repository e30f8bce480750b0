"""The coarse stage's 3D U-Net (METHODS.md §1.2 and §3), built from MONAI blocks.

Written as explicit encoder/decoder lists rather than MONAI's nested `UNet` so that the decoder-side
feature maps are reachable: voxel-level Siamese pretraining (§3) projects the three deepest decoder maps.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class CoarseUNet(nn.Module):
    """4-level residual 3D U-Net: `channels` per level (METHODS §3 uses 64/128/256/512; the default is lighter).

    Input (B, 1, D, H, W) with D, H, W divisible by 2**(levels-1); output (B, num_classes, D, H, W) logits.
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 1, norm: str = "instance"):
        super().__init__()
        self.channels = tuple(channels)
        self.encoders = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            self.encoders.append(
                ResidualUnit(3, prev, ch, strides=1 if i == 0 else 2, subunits=2, norm=norm, act="PRELU")
            )
            prev = ch
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for ch in reversed(channels[:-1]):
            self.ups.append(Convolution(3, prev, ch, strides=2, kernel_size=3, is_transposed=True, norm=norm, act="PRELU"))
            self.decoders.append(ResidualUnit(3, 2 * ch, ch, strides=1, subunits=1, norm=norm, act="PRELU"))
            prev = ch
        self.head = nn.Conv3d(prev, num_classes, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Each spatial size must be a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        features = [x]  # deepest first: bottleneck, then each decoder level
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            features.append(x)
        logits = self.head(x)
        if return_features:
            return logits, features
        return logits
