"""Networks wrapped around the refined encoder for pretraining; only the encoder is kept afterwards.

The encoder is `contrastseg.models.refined.Encoder`, built with the refined network's settings, so its
state dict loads into `RefinedNet.encoder` for fine-tuning (`contrastseg finetune --init`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.refined import Encoder


def pooled(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    """Global average pool of the encoder's last map: the patch's feature vector (B, C)."""
    return encoder(x)[1].float().mean((2, 3))


class ProjectionHead(nn.Module):
    """METHODS §2: Linear(C, C), ReLU, Linear(C, 256) on the pooled features, L2-normalised."""

    def __init__(self, channels: int, out: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)


class ContrastiveNet(nn.Module):
    """Encoder + projection head: x -> normalised z (SimCLR, SupCon, DCC, PolyCL)."""

    def __init__(self, encoder: Encoder, out: int = 256):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.out_channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled(self.encoder, x))


class ClassifierNet(nn.Module):
    """Encoder + linear classifier of the joint (organ, phase) label: the CE pretraining baseline."""

    def __init__(self, encoder: Encoder, classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled(self.encoder, x))


def mlp(dims: list[int], last_bn: bool = False) -> nn.Sequential:
    """Linear + BN + ReLU between the given widths; the last layer is plain Linear (optionally + BN)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=i == len(dims) - 2 and not last_bn))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
    return nn.Sequential(*layers)


class SimSiamNet(nn.Module):
    """SepaReg's Siamese model (METHODS §5.3): encoder, projector C->4096->256, predictor 256->4096->256."""

    def __init__(self, encoder: Encoder, hidden: int = 4096, out: int = 256):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.out_channels, hidden, out], last_bn=True)
        self.predictor = mlp([out, hidden, out])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled features h, projection z, prediction p)."""
        h = pooled(self.encoder, x)
        z = self.projector(h)
        return h, z, self.predictor(z)
