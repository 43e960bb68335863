"""A curriculum: stages of training, each with its own data weights, learning rate and optional optimizer
reset, and the rule that ends a stage (a number of steps, or a validation-loss plateau).

Pure bookkeeping (no torch, no data): the trainer asks after every step and every evaluation whether the
stage changed, and applies the new stage itself. The whole state is a small dict, saved in checkpoints.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


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
    difficulty: int | None = None  # leveled sources (synthetic tasks) draw from levels 1..difficulty; None: all

    @classmethod
    def from_config(cls, raw: dict[str, Any], index: int, default_weights: dict[str, float]) -> Stage:
        raw = dict(raw)
        unknown = set(raw) - {"name", "weights", "steps", "lr", "reset_optimizer", "plateau", "difficulty"}
        if unknown:
            raise ValueError(f"dataset.stages[{index}]: unknown key(s) {sorted(unknown)}")
        plateau = raw.pop("plateau", None)
        stage = cls(name=str(raw.pop("name", f"stage{index}")), weights=dict(raw.pop("weights", None) or default_weights),
                    plateau=PlateauRule(**plateau) if plateau else None, **raw)
        if stage.steps is not None and stage.steps < 1:
            raise ValueError(f"dataset.stages[{index}] ({stage.name}): steps must be positive, got {stage.steps}")
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

    def _advance(self, step: int) -> None:
        self.index, self.start = self.index + 1, step
        self.detector = self._detector()

    def after_step(self, step: int) -> str | None:
        """Call after training step `step`; the reason if the next stage begins now."""
        if not self.is_last and self.stage.steps is not None and step - self.start >= self.stage.steps:
            self._advance(step)
            return "steps"
        return None

    def after_eval(self, step: int, loss: float) -> str | None:
        """Call with the validation loss of an evaluation at `step`; the reason if the next stage begins now."""
        if self.detector is None or self.is_last:
            return None
        if self.detector.update(step - self.start, loss):
            self._advance(step)
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
