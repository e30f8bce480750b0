"""Planning a training run: guard rails, the data snapshot, the steps' command lines; and reading run folders.

A plan freezes what the run trains on (entry ids + SHA-256, written as dataset manifests in the run folder),
so exporting more cases while a run trains cannot change it, and the model card can say exactly what data
made the model. Each training step is a plain `contrastseg` command line, so pretraining is just another step.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import store
from ..errors import ContrastSegError
from ..processes import process_alive
from .base import arch_args, check_step_args, read_card, refined_card
from .snapshot import split_validation, write_snapshot

# SimpleITK (dataset, io) is imported inside the functions that need it: `contrastseg --help` stays light.

try:  # the engine's own defaults, so a run and a direct `contrastseg pretrain` / `finetune` agree
    from ..pretrain.settings import PretrainSettings

    PRETRAIN_DEFAULTS = (PretrainSettings.steps, PretrainSettings.batch)
except ImportError:
    PRETRAIN_DEFAULTS = (300, 16)

RUN_FORMAT = "contrastseg-run/1"
PLAN, STATE, STREAM, LOG, LAUNCH = "plan.json", "state.json", "progress.jsonl", "log.txt", "launch.json"
STAGES = ("pretrain", "coarse", "refined")
ALIASES = {"finetune": ("coarse", "refined")}  # what `--stages pretrain,finetune` means: both networks learn
MIN_PRETRAIN_IMAGES = 2
# The loop's defaults (METHODS §9): both stages, from the base weights, at lower learning rates than training
# from scratch; sized so 1-3 corrected cases retrain in well under 10 minutes on 2 CPU threads.
LOOP_COARSE = {"steps": 250, "batch": 2, "lr": 5e-4}
LOOP_REFINED = {"steps": 300, "batch": 16, "lr": 3e-4}
SECONDS_PER_STEP = {"pretrain": 1.0, "coarse": 0.8, "refined": 0.6}  # 2 CPU threads; only for the ETA's weights


def runs_root() -> Path:
    return store.home() / "runs"


@dataclass
class RunRequest:
    """What the user asked for (Slicer's training panel or `contrastseg run plan`)."""

    dataset: Path
    stages: tuple[str, ...] = ("coarse", "refined")
    strategy: str | None = None
    base: str | None = None  # model name or folder; None = the store's default model
    steps: int = LOOP_REFINED["steps"]  # the refined network's
    batch: int = LOOP_REFINED["batch"]
    coarse_steps: int = LOOP_COARSE["steps"]
    pretrain_steps: int = PRETRAIN_DEFAULTS[0]
    pretrain_batch: int = PRETRAIN_DEFAULTS[1]
    device: str = "auto"
    threads: int | None = None
    name: str | None = None
    seed: int = 0
    finetune_args: list[str] = field(default_factory=list)  # more `contrastseg finetune` options (refined)
    coarse_args: list[str] = field(default_factory=list)  # more `contrastseg train-coarse` options
    pretrain_args: list[str] = field(default_factory=list)

    def stage_set(self) -> tuple[str, ...]:
        """The stages asked for, aliases expanded, in run order."""
        asked = {t for s in self.stages for t in ALIASES.get(s, (s,))}
        return tuple(s for s in STAGES if s in asked)


@dataclass
class Preflight:
    """The guard rails' verdict: errors refuse the run, warnings are shown (with a batch that fits, if any)."""

    errors: list[str]
    warnings: list[str]
    labelled: int = 0
    images: int = 0
    validation: int = 0
    suggested_batch: int | None = None
    held_out: list[str] = field(default_factory=list)  # entry ids kept for before/after numbers only
    note: str = ""  # one sentence on the validation rule's outcome, for the panel and the card


def torch_missing() -> bool:
    """True before the Python requirements are installed (Slicer installs them on first use)."""
    import importlib.util

    return importlib.util.find_spec("torch") is None


def pretrain_strategies() -> list[str] | None:
    """The pretraining strategies a run can use, or None if this engine has none.

    Read from the torch-free settings module, so the Slicer panel can list them without loading torch.
    Voxel-simsiam pretrains the coarse U-Net; the others the refined network's encoder.
    """
    try:
        from ..pretrain.settings import STRATEGY_NAMES
    except ImportError:
        return None
    return list(STRATEGY_NAMES)


COARSE_STRATEGIES = ("voxel-simsiam",)  # they pretrain the coarse U-Net, which the coarse stage then fine-tunes


def preflight(req: RunRequest, probe_gpu: bool = True) -> Preflight:
    """Check a request before anything starts: enough data for each stage, the base model, the device and memory.

    `probe_gpu=False` leaves out the GPU memory check, which imports torch and starts CUDA: Slicer's panel
    plans that way (its GUI process never loads torch) and the check runs in the engine process when the
    run starts (`gpu_problem`).
    """
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
    train, held, why = split_validation(labelled, req.seed)
    result = Preflight(errors, warnings, len(labelled), len(records), len(held), held_out=[r["id"] for r in held], note=why)
    stages = req.stage_set()
    unknown = [s for s in req.stages if s not in STAGES and s not in ALIASES]
    if unknown or not stages:
        errors.append(f"unknown stages {unknown or '(none)'}; choose from {list(STAGES)} (finetune = coarse,refined)")
    if not {"coarse", "refined"} & set(stages):
        errors.append("a run must fine-tune the coarse or the refined network (pretraining alone makes no segmentation model)")
    if not train:
        errors.append(f"fine-tuning needs at least 1 labelled case to train on; the dataset at {req.dataset} has "
                      f"{len(labelled)}{f', all {len(held)} marked for validation' if held else ''}. Export a corrected case.")
    if "pretrain" in stages:
        strategies = pretrain_strategies()
        if strategies is None:
            errors.append("this ContrastSeg engine has no pretraining command; choose fine-tuning only")
        elif req.strategy not in strategies:
            errors.append(f"unknown pretraining strategy '{req.strategy}'; choose one of {strategies}")
        elif req.strategy in COARSE_STRATEGIES and "coarse" not in stages:
            errors.append(f"{req.strategy} pretrains the coarse U-Net: add the coarse stage")
        elif req.strategy not in COARSE_STRATEGIES and "refined" not in stages:
            errors.append(f"{req.strategy} pretrains the refined network's encoder: add the refined stage")
        if req.pretrain_batch < 2:
            errors.append("the pretraining batch must be at least 2 (contrastive losses need negatives)")
        if len(records) - len(held) < MIN_PRETRAIN_IMAGES and req.strategy not in COARSE_STRATEGIES:
            errors.append(f"pretraining needs at least {MIN_PRETRAIN_IMAGES} CTs besides the held-out ones (labelled or "
                          f"not); the dataset has {len(records) - len(held)}. Add unlabelled CTs with `contrastseg dataset add IMAGE`.")
    if req.name is not None and not re.fullmatch(store.NAME_RE, req.name):
        errors.append(f"run name '{req.name}' is not allowed: up to 64 letters, digits, '.', '_' or '-', starting with "
                      "a letter or digit (it names the run folder and the model)")
    empty = [r["id"] for r in train if r.get("organ_voxels") is not None and not any(r["organ_voxels"].values())]
    if train and len(empty) == len(train):
        errors.append(f"the labelled case(s) to train on ({', '.join(empty)}) hold no organ voxels: nothing to learn from")
    for what, value in (("steps", req.steps), ("batch", req.batch), ("coarse steps", req.coarse_steps),
                        ("pretrain steps", req.pretrain_steps), ("pretrain batch", req.pretrain_batch)):
        if value < 1:
            errors.append(f"{what} must be at least 1 (got {value})")
    try:
        card = read_card(store.resolve(req.base))
    except ContrastSegError as err:
        errors.append(f"base model: {err}")
        card = None
    if card is not None and "refined" in stages and not card.get("refined") and not req.finetune_args:
        warnings.append("the base model has no refined network: the refined stage starts from random weights")
    if req.device not in ("auto", "cpu", "cuda"):
        errors.append(f"unknown device '{req.device}'; use auto, cpu or cuda")
    elif probe_gpu and req.device != "cpu" and card is not None and not errors:
        problem, warning, suggested = gpu_problem(req.device, card, req.finetune_args, req.batch)
        errors += [problem] if problem else []
        warnings += [warning] if warning else []
        result.suggested_batch = suggested
    return result


def gpu_problem(device: str, base_card: dict, finetune_args, batch: int) -> tuple[str | None, str | None, int | None]:
    """(error, warning, suggested batch) of training the refined network on `device` (imports torch)."""
    from .memory import check_gpu

    return check_gpu(device, refined_card(base_card, finetune_args), batch)


def _weights(req: RunRequest, stages: tuple[str, ...], n_train: int, n_val: int) -> dict[str, float]:
    """Each step's share of the run's progress bar: its expected seconds, so the ETA covers the whole run."""
    w = {"pretrain": 30 + req.pretrain_steps * SECONDS_PER_STEP["pretrain"],
         "coarse": 10 * n_train + req.coarse_steps * SECONDS_PER_STEP["coarse"],
         "refined": 15 * n_train + req.steps * SECONDS_PER_STEP["refined"],
         "validate": 15 * (n_train + 2 * n_val), "register": 1.0}
    return {k: round(v, 1) for k, v in w.items() if k in stages or k in ("validate", "register")}


def make_plan(req: RunRequest, run_dir: Path | None = None, probe_gpu: bool = True) -> tuple[Path, dict]:
    """Check the request, freeze the data and write `plan.json`; returns the run folder and the plan.
    (`probe_gpu`: see `preflight`.)

    Steps: [pretrain] -> coarse (train-coarse --base: partial labels, distillation, replay) -> refined
    (finetune on the new coarse network's attention) -> validate -> register.
    """
    check = preflight(req, probe_gpu)
    if check.errors:
        raise ContrastSegError("; ".join(check.errors))
    stages = req.stage_set()
    with _claimed(req, run_dir, stages) as (run_dir, name):  # exactly one concurrent plan gets a name
        return _write_plan(req, run_dir, name, stages, check)


@contextlib.contextmanager
def _claimed(req: RunRequest, run_dir: Path | None, stages: tuple[str, ...]):
    """(run folder, run name), claimed (`claim.claim`) until the block ends. A name the user chose (--name or
    --run) is claimed or refused; an automatic one moves on to `-2`, `-3`... when taken."""
    from .claim import RunTaken, claim

    auto = req.name is None and run_dir is None
    base = req.name or f"{'-'.join(stages)}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [base] + ([f"{base}-{n}" for n in range(2, 50)] if auto else [])
    with contextlib.ExitStack() as stack:
        for i, wanted in enumerate(names):
            name = store.unused_name(wanted)
            if auto and name != wanted:
                continue  # a model has that name: try the next
            folder = Path(run_dir) if run_dir else runs_root() / name
            try:
                stack.enter_context(claim(folder, PLAN))
                break
            except RunTaken:
                if i == len(names) - 1 or not auto:
                    raise
        else:
            raise ContrastSegError(f"no free run name from '{base}' on; give one with --name")
        yield folder, name


def _write_plan(req: RunRequest, run_dir: Path, name: str, stages: tuple[str, ...], check: Preflight) -> tuple[Path, dict]:
    """The data snapshot, the steps' command lines (checked as their commands parse them) and plan.json."""
    from ..dataset_edit import latest_per_case, live_records
    from ..io import write_json

    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    records = latest_per_case(live_records(req.dataset))
    labelled = sorted((r for r in records if r.get("labels")), key=lambda r: r["id"])
    train, held, why = split_validation(labelled, req.seed)
    val_ids = {r["id"] for r in held}
    data = {"train": write_snapshot(req.dataset, train, run_dir / "data/train.json"),
            "validation": write_snapshot(req.dataset, held, run_dir / "data/validation.json")}
    base_path = store.resolve(req.base).resolve()
    base_card = read_card(base_path)
    rcard = refined_card(base_card, req.finetune_args)
    arch = arch_args(rcard)
    common = ["--seed", str(req.seed), "--device", req.device, "--progress", "json"]
    common += ["--threads", str(req.threads)] if req.threads else []
    steps = []
    pretrained = None
    if "pretrain" in stages:
        data["pretrain"] = write_snapshot(req.dataset, [r for r in records if r["id"] not in val_ids], run_dir / "data/pretrain.json")
        if req.strategy in COARSE_STRATEGIES:
            encoder = ["--channels", ",".join(map(str, base_card["coarse"]["channels"]))]
        else:
            encoder = arch[:6] + ["--patch", str(rcard.get("patch", 128)),
                                  "--inplane-spacing", str(rcard.get("inplane_spacing", 1.5))]
        # unlabelled CTs get their organ attention from the base model's coarse network
        attention = ["--attention", str(base_path)] if any(not r.get("labels") for r in records if r["id"] not in val_ids) else []
        init = ["--init", str(base_path)] if (req.strategy in COARSE_STRATEGIES or base_card.get("refined")) else []
        steps.append({"name": "pretrain", "kind": "cli", "argv": [
            "pretrain", "data/pretrain.json", "--strategy", req.strategy, "--run", "steps/pretrain",
            "--steps", str(req.pretrain_steps), "--batch", str(req.pretrain_batch), *encoder, *init, *attention,
            *common, *req.pretrain_args]})
        pretrained = "{pretrain.weights}"  # the path the pretrain step announces as its "weights" output
    model_for_refined = str(base_path)
    if "coarse" in stages:
        init = ["--init", pretrained] if pretrained and req.strategy in COARSE_STRATEGIES else []
        steps.append({"name": "coarse", "kind": "cli", "argv": [
            "train-coarse", "data/train.json", "--run", "steps/coarse", "--base", str(base_path),
            "--steps", str(req.coarse_steps), "--batch", str(LOOP_COARSE["batch"]), "--lr", str(LOOP_COARSE["lr"]),
            "--channels", ",".join(map(str, base_card["coarse"]["channels"])),
            "--spacing", ",".join(map(str, base_card["coarse"]["spacing"])), *init, *common, *req.coarse_args]})
        model_for_refined = "{coarse.model}"
    if "refined" in stages:
        refined = base_card.get("refined")
        init = ["--init", str(base_path / refined["weights"])] if refined else []
        if pretrained and req.strategy not in COARSE_STRATEGIES:
            init += ["--encoder", pretrained]
        # a base trained for prompts keeps answering clicks: the same share of prompt-like patches
        prompts = ((base_card.get("training") or {}).get("refined") or {}).get("settings", {}).get("prompts") or 0
        init += ["--prompts", str(prompts)] if prompts and "--prompts" not in req.finetune_args else []
        steps.append({"name": "refined", "kind": "cli", "argv": [
            "finetune", "data/train.json", "--run", "steps/refined", "--base", model_for_refined,
            "--steps", str(req.steps), "--batch", str(req.batch), "--lr", str(LOOP_REFINED["lr"]), *init, *arch,
            *common, *req.finetune_args]})
    check_step_args(steps)
    steps += [{"name": "validate", "kind": "validate"}, {"name": "register", "kind": "register"}]
    weights = _weights(req, stages, len(train), len(held))
    for s in steps:
        s["weight"] = weights[s["name"]]
    plan = {"format": RUN_FORMAT, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": str(Path(req.dataset).resolve()), "base": {"name": str(req.base or store.default_name()),
            "path": str(base_path)}, "request": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
            asdict(req).items() if k != "dataset"}, "stages": list(stages), "data": data, "validation_rule": why,
            "steps": steps, "warnings": check.warnings}
    write_json(plan, run_dir / PLAN)
    write_json({"status": "planned", "completed": [], "outputs": {}}, run_dir / STATE)
    return run_dir, plan


def final_model_step(plan: dict) -> str:
    """The training step whose model the run registers: the last of refined, coarse."""
    names = [s["name"] for s in plan["steps"]]
    for name in ("refined", "finetune", "coarse"):  # "finetune": runs planned before both stages learned
        if name in names:
            return name
    raise ContrastSegError(f"run {plan.get('name')} has no training step")


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
