"""Training runs: a plan of engine commands (pretrain -> finetune -> validate -> register) in one run folder.

The ContrastSegTraining Slicer module and the `contrastseg run` CLI both go through this package, so a run
started in Slicer is exactly a run a person could start in a terminal. Layout of a run folder:

    plan.json            what to run: the data snapshot (entry ids + SHA-256), settings, the steps' command lines
    state.json           where it is: status, pid, finished steps, their outputs, the registered model
    progress.jsonl       the run's JSON-lines progress stream (stdout of the detached process)
    log.txt              a log for people; each step keeps its own log in steps/<name>/log.txt
    data/*.json          the snapshot as dataset manifests (train, validation, pretrain)
    steps/<name>/        each step's own run folder (checkpoints, history, model)
    validation.json      before/after metrics on the held-out entries

Re-running `contrastseg run start RUN` resumes: finished steps are skipped and a training step resumes from
its own checkpoint. Nothing here imports torch at module level, so Slicer can list runs cheaply.
"""

from .plan import list_runs, make_plan, preflight, read_plan, run_status  # noqa: F401
