"""SepaReg (METHODS §5): separated region-level learning, in four resumable phases.

1. inter: SimSiam on SLIC regions of all CTs (one model for all organs: "inter-organ").
2. k-means (K clusters) on the inter-organ projections of every region; saved to RUN/clusters.json.
3. intra-k: one SimSiam model per cluster, trained on that cluster's regions only ("intra-organ"); each
   starts from the inter-organ model (the paper leaves the start open; this converges in fewer steps).
4. student: a fresh encoder + projector distilled from both: KL(student pooled || cluster model pooled,
   T = 0.1) + D(inter predictor(student projection), inter-organ projection). The student's encoder is
   the pretrained encoder. A cluster with fewer than 2 regions has no model; the inter-organ model stands in.

Steps: `steps` for inter and student, `steps // K` (at least 1) for each intra model, each capped by
--max-steps.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import write_json
from . import losses
from .augment import apply_affines, random_affines, two_views
from .context import Context, epochs_to_steps
from .data import PretrainEntry
from .heads import SimSiamNet, mlp, pooled
from .regions import build_bank, kmeans
from .samplers import prepare_cases
from .common import Result, build_encoder, patch_sampler


def separeg_stages(s) -> dict[str, float]:
    k = s.clusters
    inter, intra = s.capped(s.steps), s.capped(max(1, s.steps // k))
    stages = {"prepare": 0.05 * inter, "inter": float(inter), "kmeans": 0.05 * inter}
    stages.update({f"intra-{j + 1}": float(intra) for j in range(k)})
    stages.update({"student": 1.5 * inter, "embedding": 0.1 * inter})
    return stages


class _Student(torch.nn.Module):
    """Student encoder + projector (C->4096->256), no predictor: the frozen inter-organ predictor is used."""

    def __init__(self, encoder, hidden: int = 4096, out: int = 256):
        super().__init__()
        self.encoder = encoder
        self.projector = mlp([encoder.out_channels, hidden, out], last_bn=True)

    def forward(self, x):
        h = pooled(self.encoder, x)
        return h, self.projector(h)


@torch.no_grad()
def _project(net: SimSiamNet, bank, size: int, ctx: Context, batch: int = 64) -> torch.Tensor:
    net.eval()
    out = []
    for i in range(0, len(bank), batch):
        x = ctx.tensor(bank.crops(np.arange(i, min(len(bank), i + batch)), size))
        with ctx.autocast():
            out.append(net(x)[1].float().cpu())
    return torch.cat(out)


def run_separeg(ctx: Context, items: list[PretrainEntry]) -> Result:
    s, n, size = ctx.settings, ctx.settings.batch, ctx.settings.patch
    ctx.stage("prepare", "SLIC superpixels inside the body")
    cases = prepare_cases(items, ctx.dataset, s.inplane_spacing, s.input_spec().intensity)
    bank = build_bank(items, cases, ctx.dataset, s.region_slices, s.slic_segments, s.slic_compactness, s.slic_sigma, s.max_regions)
    ctx.log(f"separeg: {len(bank)} regions from {len(cases)} CTs ({s.region_slices} slices each)")

    def simsiam_step(pool: np.ndarray):
        def step(forward, rng):
            x = ctx.tensor(bank.crops(pool[rng.integers(len(pool), size=n)], size))
            v1, v2 = two_views(x, rng, size)
            with ctx.autocast():
                _, z, p = forward(torch.cat([v1, v2]))
            return losses.simsiam(p[:n], p[n:], z[:n], z[n:])
        return step

    everything = np.arange(len(bank))
    inter = SimSiamNet(build_encoder(ctx))
    ctx.train_phase("inter", inter, simsiam_step(everything), s.capped(s.steps), 2 * n,
                    epochs_to_steps(len(bank), n, ctx.dist.world, s.epoch_steps))

    ctx.stage("kmeans", f"k-means (K = {s.clusters}) on {len(bank)} region projections")
    inter.eval()
    assign = kmeans(_project(inter, bank, size, ctx), s.clusters, seed=s.seed).numpy()
    counts = np.bincount(assign, minlength=s.clusters).tolist()
    if ctx.dist.main:
        write_json({"clusters": s.clusters, "counts": counts, "assignment": assign.tolist()}, ctx.run_dir / "clusters.json")
    ctx.log(f"separeg: cluster sizes {counts}")

    teachers: list[SimSiamNet] = []
    for j in range(s.clusters):
        pool = np.flatnonzero(assign == j)
        if len(pool) < 2:
            teachers.append(inter)
            ctx.log(f"separeg: cluster {j + 1} has {len(pool)} region(s): the inter-organ model stands in")
            continue
        model = SimSiamNet(build_encoder(ctx))
        model.load_state_dict(inter.state_dict())
        ctx.train_phase(f"intra-{j + 1}", model, simsiam_step(pool), s.capped(max(1, s.steps // s.clusters)), 2 * n,
                        epochs_to_steps(len(pool), n, ctx.dist.world, s.epoch_steps))
        teachers.append(model.eval())

    for t in teachers + [inter]:
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)
    encoder = build_encoder(ctx)
    student = _Student(encoder)
    tdist = s.distill_temperature

    def distill_step(forward, rng):
        idx = rng.integers(len(bank), size=n)
        x = ctx.tensor(bank.crops(idx, size))
        theta = torch.from_numpy(random_affines(n, rng)).to(ctx.device)
        x = apply_affines(x, theta, size)  # one view, shared by student and teachers
        with ctx.autocast():
            h, z = forward(x)
            with torch.no_grad():
                _, z_inter, _ = inter(x)
                h_teacher = torch.zeros_like(h)
                for j in np.unique(assign[idx]):
                    sel = torch.from_numpy(np.flatnonzero(assign[idx] == j)).to(ctx.device)
                    h_teacher[sel] = pooled(teachers[j].encoder, x[sel]).to(h.dtype)
            p = inter.predictor(z)
        return losses.distill_kl(h, h_teacher, tdist) + losses.negative_cosine(p, z_inter)

    ctx.train_phase("student", student, distill_step, s.capped(s.steps), n,
                    epochs_to_steps(len(bank), n, ctx.dist.world, s.epoch_steps),
                    params=list(student.parameters()))
    probe = patch_sampler(ctx, items) if all(it.attention != "none" for it in items) else None
    return Result("encoder", encoder, probe)
