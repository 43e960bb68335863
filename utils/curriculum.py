"""A curriculum: stages of training, each with its own data weights, learning rate (and optionally its own warmup
and schedule) and optional optimizer reset, and the rule that ends a stage (a number of steps, or a
validation-loss plateau). A run may start or resume at any stage (curriculum.start_stage).

Pure bookkeeping (no torch, no data): the trainer asks after every step and every evaluation whether the
stage changed, and applies the new stage itself. The whole state is a small dict, saved in checkpoints.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from models.trm import check_field_types


@dataclass
class PlateauRule:
    """A plateau: the median validation loss of the last `window` checks improved on the median of the
    `window` checks before them by less than `threshold` (a fraction of the earlier median), on `patience`
    consecutive checks, and the stage has run at least `min_steps` steps (earlier checks do not count).
    Medians of 3 or more checks make one outlying check, high or low, harmless."""
    window: int = 3
    threshold: float = 0.01
    patience: int = 2
    min_steps: int = 0

    def __post_init__(self):
        if self.window < 1 or self.patience < 1 or self.threshold < 0 or self.min_steps < 0:
            raise ValueError(f"plateau: need window >= 1, patience >= 1, threshold >= 0, min_steps >= 0; got {self}")


class PlateauDetector:
    def __init__(self, rule: PlateauRule):
        self.rule = rule
        self.losses: list[float] = []  # one per check of this stage
        self.flat_checks = 0  # consecutive flat checks so far

    def is_flat(self, steps_in_stage: int) -> bool:
        w = self.rule.window
        if steps_in_stage < self.rule.min_steps or len(self.losses) < 2 * w:
            return False
        before, recent = statistics.median(self.losses[-2 * w:-w]), statistics.median(self.losses[-w:])
        return before - recent < self.rule.threshold * abs(before)

    def update(self, steps_in_stage: int, loss: float) -> bool:
        """Record one check; True when the plateau is confirmed."""
        if not math.isfinite(loss):
            raise ValueError(f"plateau detection: the validation loss is {loss}")
        self.losses.append(float(loss))
        self.flat_checks = self.flat_checks + 1 if self.is_flat(steps_in_stage) else 0
        return self.flat_checks >= self.rule.patience

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "flat_checks": self.flat_checks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.flat_checks = [float(x) for x in state["losses"]], int(state["flat_checks"])


@dataclass
class Stage:
    name: str
    weights: dict[str, float]  # data source -> sampling weight
    steps: int | None = None  # end after this many steps in the stage
    lr: float | None = None  # None: the run's lr
    reset_optimizer: bool = False  # fresh optimizer state when the stage begins
    plateau: PlateauRule | None = None  # end when the validation loss plateaus
    lr_schedule: str = "run"  # run: the run's warmup and decay, scaled; constant: constant after the warmup
    warmup_steps: int | None = None  # a linear warmup from the stage's first step (constant: default lr_warmup_steps)
    difficulty: int | None = None  # leveled sources (synthetic tasks) draw from levels 1..difficulty; None: all

    @classmethod
    def from_config(cls, raw: dict[str, Any], index: int, default_weights: dict[str, float]) -> Stage:
        raw = dict(raw)
        unknown = set(raw) - {"name", "weights", "steps", "lr", "reset_optimizer", "plateau", "lr_schedule",
                              "warmup_steps", "difficulty"}
        if unknown:
            raise ValueError(f"dataset.stages[{index}]: unknown key(s) {sorted(unknown)}")
        plateau = raw.pop("plateau", None)
        stage = cls(name=str(raw.pop("name", f"stage{index}")), weights=dict(raw.pop("weights", None) or default_weights),
                    plateau=PlateauRule(**plateau) if plateau else None, **raw)
        check_field_types(stage, prefix=f"dataset.stages[{index}] ({stage.name}): ")
        if stage.steps is not None and stage.steps < 1:
            raise ValueError(f"dataset.stages[{index}] ({stage.name}): steps must be positive, got {stage.steps}")
        if stage.lr_schedule not in ("run", "constant"):
            raise ValueError(f"dataset.stages[{index}] ({stage.name}): lr_schedule must be run or constant, "
                             f"got {stage.lr_schedule!r}")
        if stage.warmup_steps is not None and stage.warmup_steps < 0:
            raise ValueError(f"dataset.stages[{index}] ({stage.name}): warmup_steps must be >= 0, "
                             f"got {stage.warmup_steps}")
        if stage.difficulty is not None and (isinstance(stage.difficulty, bool) or not isinstance(stage.difficulty, int)
                                             or stage.difficulty < 1):
            raise ValueError(f"dataset.stages[{index}] ({stage.name}): difficulty must be a level >= 1, "
                             f"got {stage.difficulty!r}")
        return stage


class Curriculum:
    """The current stage and when it began. The last stage runs until training ends."""

    def __init__(self, stages: list[Stage]):
        if not stages:
            raise ValueError("a curriculum needs at least one stage")
        self.stages = stages
        self.index, self.start = 0, 0
        self.detector = self._detector()

    def _detector(self) -> PlateauDetector | None:
        rule = self.stages[self.index].plateau
        return PlateauDetector(rule) if rule else None

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.stages) - 1

    def index_of(self, stage: int | str) -> int:
        """A stage by index or name (curriculum.start_stage)."""
        names = [s.name for s in self.stages]
        if str(stage).isdigit() and int(stage) < len(names):
            return int(stage)
        if str(stage) in names:
            return names.index(str(stage))
        raise ValueError(f"curriculum.start_stage={stage}: no such stage; the stages are "
                         + ", ".join(f"{i} ({name})" for i, name in enumerate(names)))

    def move_to(self, index: int, step: int) -> bool:
        """Begin stage `index` at `step`; False (nothing changes) when it is the current stage already."""
        if index == self.index:
            return False
        self.index, self.start = index, step
        self.detector = self._detector()
        return True

    def lr_factor(self, step: int, run_factor: float, run_warmup: int) -> float:
        """The learning-rate factor of training step `step` in this stage: the run's schedule (`run_factor`), or
        1 (lr_schedule: constant) after a linear warmup over the stage's first warmup_steps (default: the run's)."""
        stage = self.stage
        if stage.lr_schedule == "constant":
            factor, warmup = 1.0, run_warmup if stage.warmup_steps is None else stage.warmup_steps
        else:
            factor, warmup = run_factor, stage.warmup_steps or 0
        return factor * min(1.0, (step - self.start) / warmup) if warmup else factor

    def after_step(self, step: int) -> str | None:
        """Call after training step `step`; the reason if the next stage begins now."""
        if not self.is_last and self.stage.steps is not None and step - self.start >= self.stage.steps:
            self.move_to(self.index + 1, step)
            return "steps"
        return None

    def after_eval(self, step: int, loss: float) -> str | None:
        """Call with the validation loss of an evaluation at `step`; the reason if the next stage begins now."""
        if self.detector is None or self.is_last:
            return None
        if self.detector.update(step - self.start, loss):
            self.move_to(self.index + 1, step)
            return "plateau"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start,
                "detector": self.detector.state_dict() if self.detector else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not 0 <= int(state["index"]) < len(self.stages):
            raise ValueError(f"resume: the checkpoint is in stage {state['index']}, the config has {len(self.stages)}")
        self.index, self.start = int(state["index"]), int(state["start"])
        self.detector = self._detector()
        if self.detector and state["detector"]:
            self.detector.load_state_dict(state["detector"])
