"""Run logging: Weights & Biases (online/offline/disabled) plus <run_dir>/metrics.jsonl, and optionally TensorBoard
(<run_dir>/tb)."""
from __future__ import annotations

import glob
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from utils.files import atomic_write


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


def resolve_mode(mode: str) -> str:
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto, online, offline or disabled, got {mode!r}")
    if os.environ.get("WANDB_MODE") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":  # never block a first run on a login prompt
        return "online" if wandb_key_configured() else "offline"
    return mode


def drop_lines_after(path: str, step: int) -> int:
    """Remove the records of a .jsonl log whose step is past `step`; returns how many. A run that crashed after
    its last checkpoint logged steps that its resumed run logs again: without this they would appear twice."""
    def logged_by_then(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:  # the half-written last line of a crash
            return False

    lines = Path(path).read_text().splitlines(keepends=True)
    kept = [line for line in lines if logged_by_then(line)]
    if len(kept) < len(lines):
        atomic_write(Path(path), lambda f: f.write("".join(kept).encode()))
    return len(lines) - len(kept)


class RunLogger:
    def __init__(self, run_dir: str, project: str, run_name: str, config: dict[str, Any], mode: str = "auto",
                 entity: str | None = None, tags: list[str] | None = None, enabled: bool = True,
                 resumed_at: int | None = None, tensorboard: bool = False, group: str | None = None):
        """`resumed_at`: the step of the checkpoint a resumed run starts from; the local logs are cut back to it.
        `tensorboard`: the same scalars to <run_dir>/tb too. `group`: the W&B group of related runs."""
        self.enabled = enabled  # False on non-zero ranks
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.wandb = self.tensorboard = None
        if not enabled:
            return
        if tensorboard:
            self.tensorboard = tensorboard_writer(os.path.join(run_dir, "tb"), resumed_at)
        if resumed_at is not None:
            for log in sorted(glob.glob(os.path.join(run_dir, "*.jsonl"))):  # metrics and the tables of log_table
                if dropped := drop_lines_after(log, resumed_at):
                    print(f"{log}: dropped {dropped} record(s) logged after step {resumed_at}, which is resumed")
        mode = resolve_mode(mode)
        if mode != "disabled":
            import wandb

            # the W&B run id is kept in the run directory so that a resumed run continues the same W&B run
            id_file = os.path.join(run_dir, "wandb_id")
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:8]
            with open(id_file, "w") as f:
                f.write(run_id)
            self.wandb = wandb.init(project=project, name=run_name, config=config, mode=mode, entity=entity,
                                    tags=list(tags or []), dir=run_dir, id=run_id, resume="allow", group=group)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: (None if math.isnan(v) else v) for k, v in clean.items()}}) + "\n")
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        if self.tensorboard is not None:
            for name, value in clean.items():
                self.tensorboard.add_scalar(name, value, step)

    def logged(self, step: int, prefix: str) -> bool:
        """Whether a record of `step` with a metric named `prefix`... is in the local log (rank 0's; else False)."""
        if not self.enabled or not os.path.exists(self.path):
            return False
        with open(self.path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        return any(r.get("step") == step and any(k.startswith(prefix) for k in r) for r in records)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """Rows of text (e.g. prompts and replies): to <run_dir>/<name>.jsonl and a W&B table."""
        if not self.enabled or not rows:
            return
        with open(os.path.join(os.path.dirname(self.path), f"{name}.jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb is not None:
            import wandb

            columns = list(rows[0])
            self.wandb.log({name: wandb.Table(columns=["step", *columns],
                                              data=[[step, *(r[c] for c in columns)] for r in rows])}, step=step)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def tensorboard_writer(log_dir: str, resumed_at: int | None):
    """A TensorBoard SummaryWriter (a resumed run's hides the events logged after its checkpoint), or None with a
    note when the optional tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("logger.tensorboard=true: the tensorboard package is not installed (pip install tensorboard); "
              "training goes on without TensorBoard logs")
        return None
    return SummaryWriter(log_dir, purge_step=None if resumed_at is None else resumed_at + 1)
