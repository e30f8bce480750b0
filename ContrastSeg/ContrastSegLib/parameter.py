"""What the user chose in the module panel, and the engine request it becomes.

`SegmentSettings` is a Slicer `parameterPack`, so the typed parameter node (`ContrastSegParameterNode` in
ContrastSeg.py) stores it in the scene and binds it to the widgets. Outside the Slicer application
(slicer-core in CI, where `slicer.parameterNodeWrapper` cannot import because it needs Qt) the same class
is a plain dataclass with the same fields and defaults, so the Logic and its tests use one type.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

try:  # real Slicer
    from slicer.parameterNodeWrapper import Choice, Maximum, Minimum, parameterPack
except ImportError:  # slicer-core or plain Python: the annotations are inert, the class a dataclass

    @dataclasses.dataclass(frozen=True)
    class Choice:  # noqa: D101 - stand-in for slicer.parameterNodeWrapper.Choice
        choices: tuple

    @dataclasses.dataclass(frozen=True)
    class Minimum:  # noqa: D101
        minimum: float

    @dataclasses.dataclass(frozen=True)
    class Maximum:  # noqa: D101
        maximum: float

    def parameterPack(cls):  # noqa: N802 - same name as Slicer's decorator
        return dataclasses.dataclass(cls)


# Device labels the user sees -> the engine's --device values.
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}
REFINED = "coarse then refined"
COARSE_ONLY = "coarse only"
QUALITIES = (REFINED, COARSE_ONLY)


@parameterPack
class SegmentSettings:
    """One segmentation request. Empty `model` / `organs` mean the store's default model / all its organs."""

    model: str = ""
    device: Annotated[str, Choice(tuple(DEVICES))] = "auto"
    quality: Annotated[str, Choice(QUALITIES)] = REFINED
    organs: str = ""  # comma-separated organ keys (contrastseg.organs), as the engine's --organs takes them
    keepCoarse: bool = False  # keep the coarse result as its own node beside the refined one
    show3D: bool = True  # build closed surfaces so the organs show in the 3D view
    threads: Annotated[int, Minimum(0), Maximum(256)] = 0  # CPU threads for torch; 0 = torch's choice


def settings_names() -> list[str]:
    """The field names of SegmentSettings, whether it is a parameterPack or the dataclass stand-in."""
    if dataclasses.is_dataclass(SegmentSettings):
        return [f.name for f in dataclasses.fields(SegmentSettings)]
    return list(SegmentSettings.allParameters)


def copy_settings(settings: SegmentSettings) -> SegmentSettings:
    """A detached copy: a run keeps the choices it started with while the user edits the panel."""
    return SegmentSettings(**{name: getattr(settings, name) for name in settings_names()})


def coarse_only(settings: SegmentSettings) -> bool:
    return settings.quality == COARSE_ONLY


def engine_device(settings: SegmentSettings) -> str:
    """The engine's --device value; an unknown label falls back to auto rather than failing the run."""
    return DEVICES.get(settings.device, settings.device if settings.device in DEVICES.values() else "auto")


def segment_request(settings: SegmentSettings, output: Path, coarse_output: Path | None) -> dict:
    """The worker's `segment` fields (contrastseg.serve) for `settings`; the device and thread count belong to
    the worker process (worker.EngineWorker), the model to the open CT.

    Coarse-only runs get no coarse_output: their one output *is* the coarse map, and a second copy would
    only make the module load the same labels twice.
    """
    request = {"output": str(output), "coarse_only": coarse_only(settings)}
    if not coarse_only(settings) and coarse_output is not None:
        request["coarse_output"] = str(coarse_output)
    if settings.organs.strip():
        request["organs"] = [o.strip() for o in settings.organs.split(",") if o.strip()]
    return request
