"""Planning a training run: guard rails, the data snapshot, the steps' command lines; and reading run folders.

A plan freezes what the run trains on (entry ids + SHA-256, written as dataset manifests in the run folder),
so exporting more cases while a run trains cannot change it, and the model card can say exactly what data
made the model. Each training step is a plain `contrastseg` command line, so pretraining is just another step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import store
from ..errors import ContrastSegError
from ..train.settings import RefinedSettings

# SimpleITK (dataset, io) is imported inside the functions that need it: `contrastseg --help` stays light.

try:  # the engine's own defaults, so a run and a direct `contrastseg pretrain` / `finetune` agree
    from ..pretrain.settings import PretrainSettings

    PRETRAIN_DEFAULTS = (PretrainSettings.steps, PretrainSettings.batch)
except ImportError:
    PRETRAIN_DEFAULTS = (300, 16)

RUN_FORMAT = "contrastseg-run/1"
PLAN, STATE, STREAM, LOG, LAUNCH = "plan.json", "state.json", "progress.jsonl", "log.txt", "launch.json"
STAGES = ("pretrain", "finetune")
MIN_PRETRAIN_IMAGES = 2
WEIGHTS = {"pretrain": 1.0, "finetune": 1.0, "validate": 0.15, "register": 0.02}


def runs_root() -> Path:
    return store.home() / "runs"


@dataclass
class RunRequest:
    """What the user asked for (Slicer's training panel or `contrastseg run plan`)."""

    dataset: Path
    stages: tuple[str, ...] = ("finetune",)
    strategy: str | None = None
    base: str | None = None  # model name or folder; None = the store's default model
    steps: int = RefinedSettings.steps
    batch: int = RefinedSettings.batch
    pretrain_steps: int = PRETRAIN_DEFAULTS[0]
    pretrain_batch: int = PRETRAIN_DEFAULTS[1]
    validation: int | None = None  # held-out labelled cases; None = 1 if there are 2 or more, else 0
    device: str = "auto"
    threads: int | None = None
    name: str | None = None
    seed: int = 0
    finetune_args: list[str] = field(default_factory=list)
    pretrain_args: list[str] = field(default_factory=list)


@dataclass
class Preflight:
    """The guard rails' verdict: errors refuse the run, warnings are shown (with a batch that fits, if any)."""

    errors: list[str]
    warnings: list[str]
    labelled: int = 0
    images: int = 0
    validation: int = 0
    suggested_batch: int | None = None


def torch_missing() -> bool:
    """True before the Python requirements are installed (Slicer installs them on first use)."""
    import importlib.util

    return importlib.util.find_spec("torch") is None


def pretrain_strategies() -> list[str] | None:
    """The pretraining strategies a run can use (those that pretrain the refined encoder), or None if none.

    Read from the torch-free settings module, so the Slicer panel can list them without loading torch.
    """
    try:
        from ..pretrain.settings import STRATEGY_NAMES
    except ImportError:
        return None
    return [n for n in STRATEGY_NAMES if n not in COARSE_STRATEGIES]


COARSE_STRATEGIES = ("voxel-simsiam",)  # they pretrain the coarse U-Net: `contrastseg pretrain` + `train-coarse`


def preflight(req: RunRequest) -> Preflight:
    """Check a request before anything starts: enough data for each stage, the base model, the device and memory."""
    from ..dataset_edit import latest_per_case, live_records

    errors, warnings = [], []
    if torch_missing():
        return Preflight(["PyTorch is not installed yet: segment once in the ContrastSeg module (it installs the "
                          "requirements), or `pip install torch`"], [])
    try:
        records = latest_per_case(live_records(req.dataset))
    except ContrastSegError as err:
        return Preflight([str(err)], [])
    labelled = [r for r in records if r.get("labels")]
    val = req.validation if req.validation is not None else (1 if len(labelled) >= 2 else 0)
    result = Preflight(errors, warnings, len(labelled), len(records), val)
    unknown = [s for s in req.stages if s not in STAGES]
    if unknown or not req.stages:
        errors.append(f"unknown stages {unknown or '(none)'}; choose from {list(STAGES)}")
    if "finetune" not in req.stages:
        errors.append("a run must fine-tune (pretraining alone makes no segmentation model)")
    if val < 0 or val > len(labelled):
        errors.append(f"cannot hold out {val} cases for validation: the dataset has {len(labelled)} labelled cases")
    elif len(labelled) - val < 1:
        errors.append(f"fine-tuning needs at least {1 + val} labelled cases (1 to train on"
                      f"{f', {val} held out for validation' if val else ''}); the dataset at {req.dataset} has "
                      f"{len(labelled)}. Export more corrected cases{' or set validation to 0' if val else ''}.")
    if "pretrain" in req.stages:
        strategies = pretrain_strategies()
        if strategies is None:
            errors.append("this ContrastSeg engine has no pretraining command; choose fine-tuning only")
        elif req.strategy in COARSE_STRATEGIES:
            errors.append(f"{req.strategy} pretrains the coarse U-Net, and a run fine-tunes the refined network; use "
                          f"`contrastseg pretrain --strategy {req.strategy}` and `contrastseg train-coarse` directly")
        elif req.strategy not in strategies:
            errors.append(f"unknown pretraining strategy '{req.strategy}'; choose one of {strategies}")
        if req.pretrain_batch < 2:
            errors.append("the pretraining batch must be at least 2 (contrastive losses need negatives)")
        if len(records) - val < MIN_PRETRAIN_IMAGES:
            errors.append(f"pretraining needs at least {MIN_PRETRAIN_IMAGES} CTs besides the held-out ones (labelled or "
                          f"not); the dataset has {len(records) - val}. Add unlabelled CTs with `contrastseg dataset add IMAGE`.")
    for what, value in (("steps", req.steps), ("batch", req.batch), ("pretrain steps", req.pretrain_steps),
                        ("pretrain batch", req.pretrain_batch)):
        if value < 1:
            errors.append(f"{what} must be at least 1 (got {value})")
    try:
        card = read_card(store.resolve(req.base))
    except ContrastSegError as err:
        errors.append(f"base model: {err}")
        card = None
    if req.device not in ("auto", "cpu", "cuda"):
        errors.append(f"unknown device '{req.device}'; use auto, cpu or cuda")
    elif req.device != "cpu" and card is not None and not errors:
        from .memory import check_gpu

        problem, warning, suggested = check_gpu(req.device, _refined_card(card, req), req.batch)
        errors += [problem] if problem else []
        warnings += [warning] if warning else []
        result.suggested_batch = suggested
    return result


def read_card(folder: Path) -> dict:
    """A model card as JSON, checked like models.files.read_card but without importing torch (Slicer plans runs)."""
    path = Path(folder) / "card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ContrastSegError(f"no readable model card at {path} ({err})") from None
    if not isinstance(card, dict) or card.get("format") != "contrastseg-model/1" or not card.get("coarse"):
        raise ContrastSegError(f"{path} is not a ContrastSeg model card with a coarse network")
    return card


def _refined_card(base_card: dict, req: RunRequest) -> dict:
    """The refined network this run trains: the base model's architecture, overridden by explicit options."""
    if base_card.get("refined"):
        card = {k: v for k, v in base_card["refined"].items() if k != "weights"}
    else:  # a coarse-only base: the engine's default refined network
        card = RefinedSettings().card()
    args = req.finetune_args
    for opt, key, conv in (("--depth", "depth", int), ("--widths", "widths", lambda s: [int(v) for v in s.split(",")]),
                           ("--stem", "stem", str), ("--aspp-width", "aspp_width", int)):
        if opt in args and args.index(opt) + 1 < len(args):
            card[key] = conv(args[args.index(opt) + 1])
    return card


def _arch_args(card: dict) -> list[str]:
    args = ["--depth", str(card["depth"]), "--widths", ",".join(map(str, card["widths"])), "--stem", card["stem"],
            "--aspp-width", str(card["aspp_width"])]
    return args + ([] if card.get("skip", True) else ["--no-skip"])


def _snapshot(dataset: Path, records: list[dict], path: Path) -> list[dict]:
    """Write records as a dataset manifest with absolute paths; returns their ids and checksums."""
    from ..dataset import DATASET_FORMAT
    from ..io import write_json

    base = Path(dataset)
    out = []
    for r in records:
        rec = dict(r)
        for key in ("image", "labels"):
            if rec.get(key):
                rec[key] = str((base / rec[key]).resolve())
        out.append(rec)
    write_json({"format": DATASET_FORMAT, "entries": out, "snapshot_of": str(base.resolve())}, path)
    return [{"id": r["id"], "image_sha256": r.get("image_sha256"), "labels_sha256": r.get("labels_sha256")} for r in records]


def make_plan(req: RunRequest, run_dir: Path | None = None) -> tuple[Path, dict]:
    """Check the request, freeze the data and write `plan.json`; returns the run folder and the plan."""
    from ..dataset_edit import latest_per_case, live_records
    from ..io import write_json

    check = preflight(req)
    if check.errors:
        raise ContrastSegError("; ".join(check.errors))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = store.unused_name(req.name or f"{'-'.join(req.stages)}-{stamp}")
    run_dir = Path(run_dir) if run_dir else runs_root() / name
    if (run_dir / PLAN).exists():
        raise ContrastSegError(f"{run_dir} already holds a run; `contrastseg run start {run_dir}` resumes it")
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    records = latest_per_case(live_records(req.dataset))
    labelled = sorted((r for r in records if r.get("labels")), key=lambda r: r["id"])
    order = np.random.default_rng(req.seed).permutation(len(labelled))
    val_ids = {labelled[i]["id"] for i in order[: check.validation]}
    data = {"train": _snapshot(req.dataset, [r for r in labelled if r["id"] not in val_ids], run_dir / "data/train.json"),
            "validation": _snapshot(req.dataset, [r for r in labelled if r["id"] in val_ids], run_dir / "data/validation.json")}
    base_path = store.resolve(req.base).resolve()
    base_card = read_card(base_path)
    arch = _arch_args(_refined_card(base_card, req))
    common = ["--seed", str(req.seed), "--device", req.device, "--progress", "json"]
    common += ["--threads", str(req.threads)] if req.threads else []
    steps = []
    if "pretrain" in req.stages:
        data["pretrain"] = _snapshot(req.dataset, [r for r in records if r["id"] not in val_ids], run_dir / "data/pretrain.json")
        refined = _refined_card(base_card, req)
        encoder = arch[:6] + ["--patch", str(refined.get("patch", 128)), "--inplane-spacing", str(refined.get("inplane_spacing", 1.5))]
        # unlabelled CTs get their organ attention from the base model's coarse network
        attention = ["--attention", str(base_path)] if any(not r.get("labels") for r in records if r["id"] not in val_ids) else []
        steps.append({"name": "pretrain", "kind": "cli", "argv": [
            "pretrain", "data/pretrain.json", "--strategy", req.strategy, "--run", "steps/pretrain",
            "--steps", str(req.pretrain_steps), "--batch", str(req.pretrain_batch), *encoder, *attention, *common,
            *req.pretrain_args]})
        init = ["--init", "{pretrain.weights}"]  # the path the pretrain step announces as its "weights" output
    else:
        refined = base_card.get("refined")
        init = ["--init", str(base_path / refined["weights"])] if refined else []
    steps.append({"name": "finetune", "kind": "cli", "argv": [
        "finetune", "data/train.json", "--run", "steps/finetune", "--base", str(base_path), "--steps", str(req.steps),
        "--batch", str(req.batch), *init, *arch, *common, *req.finetune_args]})
    steps += [{"name": "validate", "kind": "validate"}, {"name": "register", "kind": "register"}]
    for s in steps:
        s["weight"] = WEIGHTS[s["name"]]
    plan = {"format": RUN_FORMAT, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": str(Path(req.dataset).resolve()), "base": {"name": str(req.base or store.default_name()),
            "path": str(base_path)}, "request": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
            asdict(req).items() if k != "dataset"}, "data": data, "steps": steps, "warnings": check.warnings}
    write_json(plan, run_dir / PLAN)
    write_json({"status": "planned", "completed": [], "outputs": {}}, run_dir / STATE)
    return run_dir, plan


def read_plan(run_dir: Path) -> dict:
    try:
        plan = json.loads((Path(run_dir) / PLAN).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ContrastSegError(f"{run_dir} holds no readable run plan ({err})") from None
    if plan.get("format") != RUN_FORMAT:
        raise ContrastSegError(f"{run_dir / PLAN} is not a ContrastSeg run plan")
    return plan


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "planned", "completed": [], "outputs": {}}


def process_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """Is `pid` alive (and, where /proc tells, a contrastseg process)? Never signals a process on Windows."""
    if not pid:
        return False
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if run_dir is not None and cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return stat != "Z" and "contrastseg" in text  # a zombie, or a pid reused by another program, is not our run
    return True


def last_event(run_dir: Path, kinds=("progress",)) -> dict | None:
    """The last event of the given kinds in the run's stream (reads only its tail)."""
    path = Path(run_dir) / STREAM
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 16384))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") in kinds:
            return event
    return None


def run_status(run_dir: Path) -> dict:
    """A run's status for lists: planned, running, done, failed, cancelled, or interrupted (died; resumable)."""
    run_dir = Path(run_dir)
    plan, state = read_plan(run_dir), read_state(run_dir)
    try:
        launch = json.loads((run_dir / LAUNCH).read_text())
    except (OSError, json.JSONDecodeError):
        launch = {}
    pid = state.get("pid") or launch.get("pid")
    alive = process_alive(pid, run_dir)
    status = state.get("status", "planned")
    if alive and status in ("planned", "running"):
        status = "running"
    elif status == "running" or (status == "planned" and launch):
        status = "interrupted"
    last = last_event(run_dir) or {}
    return {"name": plan["name"], "path": str(run_dir), "status": status, "pid": pid if alive else None,
            "stage": last.get("stage") or state.get("current"), "fraction": last.get("fraction", 1.0 if status == "done" else 0.0),
            "eta": last.get("eta") if alive else None, "message": state.get("message"), "model": state.get("model"),
            "created": plan.get("created"), "stages": [s["name"] for s in plan["steps"]],
            "resumable": status in ("interrupted", "cancelled", "failed")}


def list_runs(root: Path | None = None) -> list[dict]:
    """Every run under `root` (default $CONTRASTSEG_HOME/runs), newest first."""
    root = Path(root) if root else runs_root()
    found = []
    for d in root.iterdir() if root.exists() else []:
        if (d / PLAN).exists():
            try:
                found.append(run_status(d))
            except ContrastSegError:
                continue
    return sorted(found, key=lambda r: r.get("created") or "", reverse=True)
