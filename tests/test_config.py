"""Every config group option composes, builds its model, and the paper presets carry the paper's values."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, build_tiny, compose, compose_chat, tiny_cfg
from models import build_model
from pretrain import train

OPTIONS = {group: sorted(p.stem for p in (ROOT / "config" / group).glob("*.yaml"))
           for group in ("arch", "dataset", "optimizer", "experiment")}
PRESETS = [e for e in OPTIONS["experiment"] if e != "paper_base"]


def model_from(cfg):
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    arch["forward_dtype"] = "float32"
    return build_model(arch, seq_len=81, vocab_size=11, num_puzzle_identifiers=3)


@pytest.mark.parametrize("arch", OPTIONS["arch"])
@pytest.mark.parametrize("dataset", OPTIONS["dataset"])
@pytest.mark.parametrize("optimizer", OPTIONS["optimizer"])
def test_every_group_combination_composes(arch, dataset, optimizer):
    cfg = compose(f"arch={arch}", f"dataset={dataset}", f"optimizer={optimizer}", "data_paths=[somewhere]")
    assert cfg.arch.name == arch.split("_")[0] and cfg.arch.mlp_t == (arch == "trm_mlp")
    assert cfg.optimizer.name == optimizer
    assert cfg.data_paths == ["somewhere"]
    model_from(cfg)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_with_paper_values(preset):
    cfg = compose(f"+experiment={preset}")
    assert cfg.global_batch_size == 768 and cfg.lr == 1e-4 and cfg.ema is True
    assert cfg.arch.hidden_size == 512 and cfg.arch.H_cycles == 3 and cfg.arch.halt_max_steps == 16
    assert cfg.arch.puzzle_emb_ndim == 512 and cfg.lr_warmup_steps == 2000
    expected = {"sudoku_extreme_mlp": (6, True, "none", 1.0, 1e-4, 50000),
                "sudoku_extreme_att": (6, False, "rope", 1.0, 1e-4, 50000),
                "maze_hard": (4, False, "rope", 1.0, 1e-4, 50000),
                "arc1": (4, False, "rope", 0.1, 1e-2, 100000),
                "arc2": (4, False, "rope", 0.1, 1e-2, 100000),
                "arc_agi_1": (4, False, "rope", 0.1, 1e-2, 100000),
                "arc_agi_2": (4, False, "rope", 0.1, 1e-2, 100000)}[preset]
    got = (cfg.arch.L_cycles, cfg.arch.mlp_t, cfg.arch.pos_encodings, cfg.weight_decay, cfg.puzzle_emb_lr, cfg.epochs)
    assert got == expected
    n = sum(p.numel() for p in model_from(cfg).parameters())
    assert 4e6 < n < 8e6  # the paper's 5-7M parameters


def test_command_line_overrides_reach_the_config():
    cfg = compose("arch.H_cycles=5", "lr=3e-4", "arch=transformer", "arch.L_layers=3")
    assert cfg.arch.H_cycles == 5 and cfg.lr == 3e-4 and cfg.arch.L_layers == 3 and cfg.arch.name == "transformer"


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="learning_rate"):
        compose("learning_rate=1")


@pytest.mark.parametrize("preset", ["sudoku_extreme_att", "sudoku_extreme_mlp"])
def test_paper_preset_starts_on_cpu_with_a_tiny_override(preset, sudoku_dir, tmp_path: Path):
    cfg = compose(f"+experiment={preset}", f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", "epochs=1",
                  "max_steps=2", "global_batch_size=8", "arch.hidden_size=32", "arch.num_heads=2",
                  "arch.H_cycles=1", "arch.L_cycles=1", "arch.halt_max_steps=2", "logger.mode=disabled")
    results = train(cfg)
    assert results["test/count"] == 16


def test_chat_row_length_is_a_dataset_override(tmp_path):
    """dataset.seq_len (the chat fork's arch.seq_len) sets the chat rows' length; too short for a built
    conversation, it fails naming the fix."""
    from dataset.loaders import open_data

    out, _ = build_tiny(tmp_path)  # --max-length 64
    train_data, test_data = open_data(compose_chat(f"data_paths=[{out}]", "dataset.seq_len=128"), 0, 1)
    assert train_data.model_fields()["seq_len"] == test_data.seq_len == 128
    _, batch, _ = next(iter(train_data))
    assert batch["inputs"].shape[1] == 128
    with pytest.raises(ValueError, match="more than the row length 8 .*--max-length 8"):
        open_data(compose_chat(f"data_paths=[{out}]", "dataset.seq_len=8"), 0, 1)


@pytest.mark.parametrize("override, message", [
    ("+arch.seq_len=128", r"arch.seq_len=128: the data sets it \(81\); for chat and text rows use dataset.seq_len"),
    ("+arch.vocab_size=300", r"arch.vocab_size=300: the data sets it \(11\)"),
])
def test_an_arch_value_the_data_sets_is_refused_not_ignored(sudoku_dir, tmp_path, override, message):
    """arch.seq_len=N is not a key (Hydra suggests +arch.seq_len=N); added, it was silently replaced by the data's."""
    with pytest.raises(ValueError, match=message):
        train(tiny_cfg(sudoku_dir, tmp_path, override, "max_steps=1"))
    assert list(tmp_path.iterdir()) == []  # refused before the run directory
