"""The training panel's settings, and the engine request they become.

`TrainingSettings` is a Slicer `parameterPack` (stored in the scene's parameter node, bound to the widgets)
in real Slicer and a plain dataclass under slicer-core; the stand-ins come from ContrastSegLib.parameter so
both modules behave the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ContrastSegLib.parameter import Choice, Maximum, Minimum, parameterPack
from contrastseg.runs.plan import RunRequest

FINETUNE = "fine-tuning (coarse + refined)"
PRETRAIN_FINETUNE = "pretraining + fine-tuning"
STAGES = {FINETUNE: ("coarse", "refined"), PRETRAIN_FINETUNE: ("pretrain", "coarse", "refined")}
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}


@parameterPack
class TrainingSettings:
    """One training request. Empty `baseModel` = the store's default model. Which cases are held out is
    decided per case at export (the Validation checkbox) and by the engine's rule, not here."""

    stages: Annotated[str, Choice((FINETUNE, PRETRAIN_FINETUNE))] = FINETUNE
    strategy: str = "dcc"
    baseModel: str = ""
    steps: Annotated[int, Minimum(1), Maximum(1000000)] = RunRequest.steps
    batch: Annotated[int, Minimum(1), Maximum(4096)] = RunRequest.batch
    pretrainSteps: Annotated[int, Minimum(1), Maximum(1000000)] = RunRequest.pretrain_steps
    pretrainBatch: Annotated[int, Minimum(2), Maximum(4096)] = RunRequest.pretrain_batch
    coarseSteps: Annotated[int, Minimum(1), Maximum(1000000)] = RunRequest.coarse_steps
    device: Annotated[str, Choice(tuple(DEVICES))] = "auto"
    threads: Annotated[int, Minimum(0), Maximum(256)] = 0
    name: str = ""


def run_request(settings: TrainingSettings, dataset: Path, extra_finetune_args: list[str] | None = None) -> RunRequest:
    """The engine's RunRequest for the panel's settings."""
    return RunRequest(
        dataset=Path(dataset),
        stages=STAGES.get(settings.stages, STAGES[FINETUNE]),
        strategy=settings.strategy.strip() or None, base=settings.baseModel.strip() or None,
        steps=int(settings.steps), batch=int(settings.batch), coarse_steps=int(settings.coarseSteps),
        pretrain_steps=int(settings.pretrainSteps), pretrain_batch=int(settings.pretrainBatch),
        device=DEVICES.get(settings.device, "auto"), threads=int(settings.threads) or None,
        name=settings.name.strip() or None, finetune_args=list(extra_finetune_args or []))
