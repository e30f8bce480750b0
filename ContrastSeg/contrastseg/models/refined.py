"""The refined stage's organ-attention network (METHODS.md §1.4): a MONAI ResNet encoder and an ASPP decoder.

Input: 2 channels (normalised image, the organ's binary attention mask), any H, W divisible by the output
stride. Output: 2-class logits (background, organ) at the input size.

The stem is a setting because it sets the cost: "paper" (7x7 stride 2 + max-pool, output stride 32),
"stride2" (7x7 stride 2, no max-pool, output stride 16) and "authors" (3x3 stride 1, no max-pool, output
stride 8, about 16x the compute of "paper"). `skip=True` adds a DeepLabV3+-style refinement from the first
ResNet stage, so thin organs survive the coarse output stride on a CPU-sized encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet
from torch import nn

STEMS = {
    "paper": dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False),
    "stride2": dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=True),
    "authors": dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True),
}
DEPTHS = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
          50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3])}


class Encoder(nn.Module):
    """MONAI ResNet trunk (2D) returning the stage-1 map and the last map; the pretraining strategies train this."""

    def __init__(self, depth: int = 18, widths: tuple[int, ...] = (64, 128, 256, 512), stem: str = "stride2", in_channels: int = 2):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {sorted(STEMS)}")
        block, layers = DEPTHS[depth]
        self.net = ResNet(block, layers, list(widths), spatial_dims=2, n_input_channels=in_channels,
                          feed_forward=False, **STEMS[stem])
        expansion = 4 if block == "bottleneck" else 1
        self.low_channels = widths[0] * expansion
        self.out_channels = widths[3] * expansion
        self.stem = stem

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        low = n.layer1(x)
        return low, n.layer4(n.layer3(n.layer2(low)))


class ASPP(nn.Module):
    """DeepLabV3 ASPP: 1x1, three dilated 3x3 (6/12/18) and image pooling, concatenated, then 1x1 projection."""

    def __init__(self, in_channels: int, width: int, dilations: tuple[int, int, int] = (6, 12, 18)):
        super().__init__()
        def branch(k, d):
            return nn.Sequential(nn.Conv2d(in_channels, width, k, padding=0 if k == 1 else d, dilation=d, bias=False),
                                 nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, d) for d in dilations])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, width, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(5 * width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class RefinedNet(nn.Module):
    """ResNet encoder + ASPP decoder (+ optional low-level skip) -> 2-class logits at the input size."""

    def __init__(self, depth: int = 18, widths: tuple[int, ...] = (64, 128, 256, 512), stem: str = "stride2",
                 aspp_width: int = 512, skip: bool = True):
        super().__init__()
        self.encoder = Encoder(depth, widths, stem)
        self.aspp = ASPP(self.encoder.out_channels, aspp_width)
        self.skip = skip
        if skip:
            self.reduce = nn.Sequential(nn.Conv2d(self.encoder.low_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
            self.fuse = nn.Sequential(nn.Conv2d(aspp_width + 48, aspp_width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(aspp_width), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(aspp_width, 2, 1)

    @property
    def divisor(self) -> int:
        return {"paper": 32, "stride2": 16, "authors": 8}[self.encoder.stem]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low, deep = self.encoder(x)
        y = self.aspp(deep)
        if self.skip:
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse(torch.cat([y, self.reduce(low)], dim=1))
        return F.interpolate(self.classifier(y), size=size, mode="bilinear", align_corners=False)
