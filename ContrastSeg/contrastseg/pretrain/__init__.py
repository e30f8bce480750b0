"""Contrastive pretraining of ContrastSeg's networks: the five papers' methods (METHODS.md §2-§5).

`contrastseg pretrain DATASET --strategy NAME --run RUN` (cli/pretrain.py) calls `run.pretrain`. Layout:
losses (the loss functions), augment (paired view augmentation), data (what a strategy needs from a
dataset, coarse attention, phase estimation), samplers / slices / regions (organ patches, PolyCL triplets,
SepaReg superpixels), heads (projection heads around the encoder), strategies / polycl / separeg / voxel
(one step function per method), context (device, precision, DDP and the training loop), distributed
(torchrun), embedding (PCA plot), run (the run folder and exported weights).
"""

from .settings import PretrainSettings

__all__ = ["PretrainSettings", "pretrain"]


def pretrain(*args, **kwargs):
    from .run import pretrain as _pretrain

    return _pretrain(*args, **kwargs)
