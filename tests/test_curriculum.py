"""Mixtures and curricula: plateau detection, stage changes, sampling proportions, exact resume."""
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_LM, compose_chat
from dataset.build_chat_dataset import ChatBuildConfig, build as build_chat
from dataset.build_text_dataset import TextBuildConfig, build as build_text
from dataset.mixture import MixtureDataset, open_source, plateau_value
from pretrain import train
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.curriculum import Curriculum, PlateauDetector, PlateauRule, Stage
from utils.run import resume_config
from utils.tokenizer import ChatTokenizer

# falls by 1 per check, then is flat at 5 from check 5 on
PLATEAU_CURVE = [10, 9, 8, 7, 6, 5, 5, 5, 5, 5, 5, 5, 5, 5]


def first_advance(losses, rule: PlateauRule, every: int = 10) -> int | None:
    """The check index at which the detector confirms a plateau (check k is at step every * (k + 1))."""
    detector = PlateauDetector(rule)
    for k, loss in enumerate(losses):
        if detector.update(every * (k + 1), loss):
            return k
    return None


def test_plateau_is_confirmed_exactly_when_due():
    # window 3: check k compares median(L[k-5..k-3]) with median(L[k-2..k]). k=8: 6 -> 5, still improving;
    # k=9: 5 -> 5 flat (1); k=10: flat (2) = patience.
    assert first_advance(PLATEAU_CURVE, PlateauRule(window=3, threshold=0.01, patience=2)) == 10
    assert first_advance(PLATEAU_CURVE, PlateauRule(window=3, threshold=0.01, patience=4)) == 12
    # checks before min_steps do not count: k=9 is at step 100 < 105, so flat (1) at k=10, flat (2) at k=11
    assert first_advance(PLATEAU_CURVE, PlateauRule(window=3, threshold=0.01, patience=2, min_steps=105)) == 11
    # a looser threshold sees 6 -> 5 (16.7% better) as flat already at k=8
    assert first_advance(PLATEAU_CURVE, PlateauRule(window=3, threshold=0.2, patience=1)) == 8


def test_one_noisy_check_does_not_end_a_stage():
    improving = [10 * 0.95 ** k for k in range(40)]
    rule = PlateauRule(window=3, threshold=0.01, patience=2)
    assert first_advance(improving, rule) is None
    for k in (8, 20):
        dip, spike = list(improving), list(improving)
        dip[k], spike[k] = improving[k] * 0.5, improving[k] * 2
        assert first_advance(dip, rule) is None and first_advance(spike, rule) is None
    # a single flat-looking check (the loss stalls once) is not confirmed with patience 2
    stall = improving[:10] + [improving[9]] + [improving[9] * 0.95 ** k for k in range(1, 20)]
    assert first_advance(stall, PlateauRule(window=1, threshold=0.01, patience=2)) is None
    assert first_advance(stall, PlateauRule(window=1, threshold=0.01, patience=1)) == 10


def stages() -> list[Stage]:
    return [Stage("a", {"x": 1.0}, steps=30), Stage("b", {"x": 1.0, "y": 1.0}, plateau=PlateauRule(3, 0.01, 2)),
            Stage("c", {"y": 1.0}, steps=5)]


def test_curriculum_stages_and_state_round_trip():
    c = Curriculum(stages())
    assert [c.after_step(s) for s in range(1, 31)] == [None] * 29 + ["steps"]
    assert (c.index, c.start) == (1, 30)
    reasons, saved = [], None
    for k, loss in enumerate(PLATEAU_CURVE):
        step = 30 + 10 * (k + 1)
        if k == 7:  # a checkpoint in the middle of the plateau detection
            saved = json.loads(json.dumps(c.state_dict()))
        reasons.append(c.after_eval(step, loss))
    assert reasons.index("plateau") == 10 and c.index == 2 and c.start == 140
    assert c.after_step(10_000) is None and c.after_eval(10_000, 1.0) is None  # the last stage runs to the end
    resumed = Curriculum(stages())
    resumed.load_state_dict(saved)
    assert [resumed.after_eval(30 + 10 * (k + 1), PLATEAU_CURVE[k]) for k in range(7, 11)] == reasons[7:11]
    with pytest.raises(ValueError, match="stage 5"):
        Curriculum(stages()).load_state_dict({"index": 5, "start": 0, "detector": None})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """A tiny text dataset and a tiny chat dataset with the same (byte-level) tokenizer."""
    tmp = tmp_path_factory.mktemp("mix")
    (tmp / "text.jsonl").write_text("".join(json.dumps({"text": f"plain text number {i} " * (1 + i % 4)}) + "\n"
                                            for i in range(40)))
    build_text(TextBuildConfig(input=[str(tmp / "text.jsonl")], output_dir=str(tmp / "text"), train_split=0.8))
    chats = [{"conversations": [{"from": "human", "value": f"What is {i} + 1?"}, {"from": "gpt", "value": str(i + 1)}]}
             for i in range(40)]
    (tmp / "chat.json").write_text(json.dumps(chats))
    build_chat(ChatBuildConfig(input_file=str(tmp / "chat.json"), output_dir=str(tmp / "chat"), max_length=32,
                               train_split=0.8))
    return {"text": str(tmp / "text"), "chat": str(tmp / "chat")}


def test_mixture_draws_rows_in_the_stage_proportions(sources):
    loaders = {name: open_source(path, "train", 32, global_batch_size=16, seed=i, pack=True)
               for i, (name, path) in enumerate(sources.items())}
    curriculum = Curriculum([Stage("a", {"text": 1.0, "chat": 3.0}, steps=200), Stage("b", {"text": 1.0})])
    mixture = MixtureDataset(loaders, curriculum, global_batch_size=16, seed=0)
    user = ChatTokenizer.byte_level().special_id("user_start")
    batches = iter(mixture)
    chat_rows = 0
    for step in range(1, 201):
        _, batch, n = next(batches)
        assert n == 16 and batch["inputs"].shape == (16, 32) and set(batch) == {"inputs", "labels", "segment_ids",
                                                                                 "position_ids"}
        chat_rows += int((batch["inputs"][:, 0] == user).sum())  # chat rows start with a user turn, text never
        curriculum.after_step(step)
    assert abs(chat_rows / 3200 - 0.75) < 0.04  # binomial sd 0.0077
    assert curriculum.index == 1
    assert all((next(batches)[1]["inputs"][:, 0] != user).all() for _ in range(20))  # stage b: text only


def test_plateau_metric_must_exist():
    assert plateau_value({"loss": 1.5, "chat/loss": 2.0}, "chat/loss") == 2.0
    with pytest.raises(ValueError, match=r"no validation metric 'chat/los'; choose one of \['chat/loss', 'loss'\]"):
        plateau_value({"loss": 1.5, "chat/loss": 2.0}, "chat/los")


def test_unknown_source_in_a_stage_is_a_clear_error(sources):
    loaders = {"text": open_source(sources["text"], "train", 32, global_batch_size=4)}
    mixture = MixtureDataset(loaders, Curriculum([Stage("a", {"txt": 1.0})]), global_batch_size=4)
    with pytest.raises(ValueError, match=r"stage a: weights for unknown sources \['txt'\]"):
        next(iter(mixture))


def test_a_later_stages_bad_weights_stop_the_run_before_training(sources, tmp_path):
    """Every stage's weights are checked when the data opens, not when training reaches the stage."""
    cfg = mixture_cfg(sources, tmp_path, "dataset.stages=[{name:text,weights:{text:1.0},steps:3},"
                                         "{name:both,weights:{text:-0.5,chat:0.5}}]")
    with pytest.raises(ValueError, match=r"stage both: weights must be >= 0 and not all 0"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []  # no run directory: nothing trained


def mixture_cfg(sources, tmp: Path, *extra):
    overrides = [*TINY_LM, "dataset=mixture", "dataset.seq_len=32", f"dataset.sources.text.path={sources['text']}",
                 f"dataset.sources.chat.path={sources['chat']}", "dataset.eval_prompts=[]", "global_batch_size=4",
                 "logger.mode=disabled", "log_interval=1", "lr_warmup_steps=2", "epochs=100", "eval_interval=100",
                 "eval_at_end=false", f"checkpoint_dir={tmp}",
                 "dataset.stages=[{name:text,weights:{text:1.0},steps:3},"
                 "{name:both,weights:{text:0.5,chat:0.5},lr:3e-4,reset_optimizer:true}]", *extra]
    return compose_chat(*overrides)


def test_stage_changes_survive_resume_exactly(sources, tmp_path):
    train(mixture_cfg(sources, tmp_path, "max_steps=8", "run_name=straight"))
    train(mixture_cfg(sources, tmp_path, "max_steps=4", "run_name=split"))
    split_dir = next(tmp_path.glob("*/split"))
    overrides = [f"resume={split_dir}", "max_steps=8"]
    train(resume_config(mixture_cfg(sources, tmp_path, *overrides), overrides))

    a = load_checkpoint(find_checkpoint(str(next(tmp_path.glob("*/straight")))))
    b = load_checkpoint(find_checkpoint(str(split_dir)))
    assert a["step"] == b["step"] == 8 and a["data"] == b["data"]
    assert a["data"]["curriculum"]["index"] == 1 and a["data"]["curriculum"]["start"] == 3
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"{name} differs after resume"
    # the optimizer was reset at step 3: 5 steps of moments since
    assert all(int(s["step"]) == 5 for s in a["optimizers"][-1]["state"].values())
    rows = [json.loads(line) for line in (split_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "curriculum/stage" in r] == [3]
    lrs = {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}
    # the lr each step trained with: the stage's from its first step (4) on (the run's cosine schedule still scales
    # it, by < 0.1% here)
    assert lrs[3] == pytest.approx(1e-3, rel=1e-3)
    assert lrs[4] == pytest.approx(3e-4, rel=1e-3) and lrs[8] == pytest.approx(3e-4, rel=1e-3)


# ---------------------------------------------------------------- stage control

def test_stages_by_index_or_name_and_their_own_schedules():
    c = Curriculum([Stage("a", {"x": 1.0}, steps=10), Stage("b", {"x": 1.0}, lr_schedule="constant", warmup_steps=4),
                    Stage("c", {"x": 1.0}, warmup_steps=2), Stage("d", {"x": 1.0}, lr_schedule="constant")])
    assert [c.index_of(s) for s in (0, "1", "b", "d")] == [0, 1, 1, 3]
    with pytest.raises(ValueError, match=r"curriculum.start_stage=e: no such stage; the stages are 0 \(a\), 1 \(b\), "
                                         r"2 \(c\), 3 \(d\)"):
        c.index_of("e")
    with pytest.raises(ValueError, match="start_stage=4: no such stage"):
        c.index_of(4)
    # stage a follows the run's schedule (here at factor 0.5)
    assert c.lr_factor(5, run_factor=0.5, run_warmup=3) == 0.5
    assert c.move_to(1, 10) and not c.move_to(1, 12)  # already there: nothing changes
    assert c.start == 10
    # b: constant after its own 4 warmup steps, from its first step (11)
    assert [c.lr_factor(s, 0.5, 3) for s in (11, 12, 14, 500)] == [0.25, 0.5, 1.0, 1.0]
    c.move_to(2, 20)  # c: the run's schedule, ramped over its first 2 steps
    assert [c.lr_factor(s, 0.5, 3) for s in (21, 22, 30)] == [0.25, 0.5, 0.5]
    c.move_to(3, 30)  # d: constant after the run's warmup (3 steps), counted from the stage's start
    assert [c.lr_factor(s, 0.5, 3) for s in (31, 33, 40)] == [pytest.approx(1 / 3), 1.0, 1.0]
    with pytest.raises(ValueError, match=r"stages\[0\] \(s\): lr_schedule must be run or constant, got 'cosine'"):
        Stage.from_config({"name": "s", "lr_schedule": "cosine"}, 0, {"x": 1.0})
    with pytest.raises(ValueError, match=r"stages\[2\] \(s\): steps='abc': must be a whole number or null"):
        Stage.from_config({"name": "s", "steps": "abc"}, 2, {"x": 1.0})
    with pytest.raises(ValueError, match=r"stages\[0\] \(s\): reset_optimizer='yes': must be true or false"):
        Stage.from_config({"name": "s", "reset_optimizer": "yes", "steps": 3}, 0, {"x": 1.0})


def logged_lrs(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}


CONSTANT_STAGES = ("dataset.stages=[{name:text,weights:{text:1.0},steps:3},{name:both,weights:{text:0.5,chat:0.5},"
                   "lr:3e-4,lr_schedule:constant,warmup_steps:2,reset_optimizer:true}]")


def test_start_stage_starts_or_resumes_at_a_stage_once(sources, tmp_path):
    # a new run at stage 1 by index: its warmup from step 0, then its constant lr
    train(mixture_cfg(sources, tmp_path, CONSTANT_STAGES, "curriculum.start_stage=1", "max_steps=3", "run_name=at1"))
    at1 = next(tmp_path.glob("*/at1"))
    assert load_checkpoint(str(at1 / "step_3.pt"))["data"]["curriculum"] == {"index": 1, "start": 0, "detector": None}
    assert logged_lrs(at1) == {1: pytest.approx(1.5e-4), 2: 3e-4, 3: 3e-4}

    # a run stopped in stage 0 at step 2, resumed into stage `both` by name: it begins there at step 2
    train(mixture_cfg(sources, tmp_path, CONSTANT_STAGES, "max_steps=2", "run_name=jump"))
    run = next(tmp_path.glob("*/jump"))
    overrides = [f"resume={run}", "max_steps=4", "curriculum.start_stage=both"]
    train(resume_config(mixture_cfg(sources, tmp_path, *overrides), overrides))
    ckpt = load_checkpoint(str(run / "step_4.pt"))
    assert ckpt["data"]["curriculum"]["index"] == 1 and ckpt["data"]["curriculum"]["start"] == 2
    assert all(int(s["step"]) == 2 for s in ckpt["optimizers"][-1]["state"].values())  # reset_optimizer at the jump
    assert logged_lrs(run)[3] == pytest.approx(1.5e-4) and logged_lrs(run)[4] == 3e-4
    # a later plain resume continues in the stage it is in, without entering it again
    overrides = [f"resume={run}", "max_steps=5"]
    train(resume_config(mixture_cfg(sources, tmp_path, *overrides), overrides))
    ckpt = load_checkpoint(str(run / "step_5.pt"))
    assert ckpt["data"]["curriculum"]["start"] == 2 and all(int(s["step"]) == 3
                                                            for s in ckpt["optimizers"][-1]["state"].values())
    with pytest.raises(ValueError, match=r"curriculum.start_stage=chat: no such stage; the stages are 0 \(text\), "
                                         r"1 \(both\)"):
        train(mixture_cfg(sources, tmp_path, "curriculum.start_stage=chat", "max_steps=1", "run_name=bad"))
