"""Will a training batch fit in GPU memory? An estimate from the network itself, and a batch size that fits.

The estimate runs the refined network once on PyTorch's "meta" device (shapes only, no memory, no GPU) and
counts every layer's output per sample; training keeps about that much for backward, plus gradients and
buffers. Weights, gradients and AdamW's two moments cost four copies of the parameters. The CUDA context
and the allocator's slack are a fixed margin. It errs on the large side: a warning that is too careful
costs a smaller batch, one that is too bold costs an out-of-memory crash mid-run.
"""

from __future__ import annotations

from functools import lru_cache

CONTEXT_BYTES = 600 * 2**20  # CUDA context, cuDNN workspaces and allocator slack
ACTIVATION_FACTOR = 3.0  # saved activations + their gradients + temporaries at the peak of backward
USABLE = 0.9  # leave some of the free memory to other programs' growth


@lru_cache(maxsize=16)
def _counts(depth: int, widths: tuple[int, ...], stem: str, aspp_width: int, skip: bool, patch: int) -> tuple[int, int]:
    import torch

    from ..models.files import build_refined

    card = {"depth": depth, "widths": list(widths), "stem": stem, "aspp_width": aspp_width, "skip": skip}
    with torch.device("meta"):
        net = build_refined(card)
        outputs = []

        def hook(_module, _inputs, out):
            outputs.append(sum(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(t)))

        handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
        net.train()
        net(torch.empty(1, 2, patch, patch))
        for h in handles:
            h.remove()
    return sum(p.numel() for p in net.parameters()), sum(outputs)


def training_bytes(card: dict, batch: int, dtype_bytes: int = 4) -> int:
    """Estimated peak GPU memory (bytes) to train the refined network `card` (a model card's refined part)."""
    params, per_sample = _counts(int(card["depth"]), tuple(card["widths"]), card["stem"], int(card["aspp_width"]),
                                 bool(card.get("skip", True)), int(card.get("patch", 128)))
    return int(CONTEXT_BYTES + 4 * params * dtype_bytes + batch * per_sample * dtype_bytes * ACTIVATION_FACTOR)


def fitting_batch(card: dict, free_bytes: int) -> int:
    """The largest batch whose estimate fits in `free_bytes` (0 if not even one sample fits)."""
    one, two = training_bytes(card, 1), training_bytes(card, 2)
    per_sample = two - one
    budget = free_bytes * USABLE - (one - per_sample)
    return max(0, int(budget // per_sample))


def check_gpu(device: str, card: dict, batch: int, mem_get_info=None) -> tuple[str | None, str | None, int | None]:
    """(error, warning, suggested batch) for training `card` with `batch` on `device` ("auto" or "cuda").

    `mem_get_info` defaults to torch.cuda.mem_get_info (free, total bytes); tests pass their own.
    """
    if mem_get_info is None:
        import torch

        if not torch.cuda.is_available():
            return ("CUDA was asked for, but no CUDA GPU is available to torch here" if device == "cuda" else None), None, None
        mem_get_info = torch.cuda.mem_get_info
    free, total = mem_get_info()
    need = training_bytes(card, batch)
    if need <= free * USABLE:
        return None, None, None
    fits = fitting_batch(card, free)
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    if fits < 1:
        return (f"the GPU has {gib(free)} free of {gib(total)}; training this network needs about {gib(training_bytes(card, 1))} "
                "even with batch 1. Close other GPU programs or train on the CPU."), None, None
    return None, (f"batch {batch} needs about {gib(need)} of GPU memory but {gib(free)} of {gib(total)} is free; "
                  f"batch {fits} fits"), fits
