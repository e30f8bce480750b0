"""Distributed pretraining on CPU: 2 processes under torchrun with the gloo backend.

Checks that (1) a contrastive loss sees the other rank's embeddings (a rank's loss changes when only the
other rank's batch changes) and its gradient is the single-process gradient (times the world size, which
DDP's averaging divides out), and (2) a real 2-step `contrastseg pretrain` run under torchrun ends with the
same weights on both ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from contrastseg.pretrain import losses
from pretrain_data import shared_dataset
from realdata import needs_data

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from contrastseg.pretrain import losses
    from contrastseg.pretrain.patch_strategies import _split_gather

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {}
    for variant in (0, 1):
        seed = rank if variant == 0 or rank == 0 else 100 + rank  # only rank 1's batch changes in variant 1
        z = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(seed)), dim=1)
        z.requires_grad_(True)
        loss = losses.nt_xent(_split_gather(z, 2), 0.1)
        loss.backward()
        out[f"loss{variant}"] = float(loss)
        out[f"grad{variant}"] = z.grad.tolist()
    json.dump(out, open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
    from contrastseg.cli import main
    sys.exit(main(["pretrain", sys.argv[2], "--strategy", "dcc", "--run", os.path.join(sys.argv[1], "run"),
                   "--max-steps", "2", "--batch", "2", "--patch", "32", "--probe", "8", "--threads", "1", "--progress", "none"]))
""")


@needs_data
def test_two_gloo_ranks_share_negatives_and_end_with_identical_weights(tmp_path, tmp_path_factory):
    dataset = shared_dataset(tmp_path_factory)
    script = tmp_path / "ddp_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), str(dataset)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # the global batch is rank 0's rows then rank 1's, view 1 of every patch first, then view 2
    z = [torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(s)), dim=1) for s in (0, 1)]
    z[0].requires_grad_(True)
    ref = losses.nt_xent(torch.cat([z[0][:2], z[1][:2], z[0][2:], z[1][2:]]), 0.1)
    ref.backward()
    assert r0["loss0"] == pytest.approx(float(ref.detach()), rel=1e-5) and r1["loss0"] == pytest.approx(r0["loss0"], rel=1e-6)
    assert torch.allclose(torch.tensor(r0["grad0"]), 2 * z[0].grad, atol=1e-5)  # W x dL/dz; DDP divides by W
    assert r0["loss1"] != pytest.approx(r0["loss0"], rel=1e-4)  # rank 0's loss moved with rank 1's batch only

    a = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "run" / ".ranks" / "1" / "checkpoint.safetensors"))
    params = [k for k in a if k.startswith("model.") and not any(s in k for s in ("running_", "num_batches"))]
    assert params and all(torch.equal(a[k], b[k]) for k in params)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["hardware"]["world_size"] == 2
    assert (tmp_path / "run" / "encoder.safetensors").exists()
