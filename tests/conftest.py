import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")  # tests never talk to W&B


@pytest.fixture(scope="session")
def sudoku_dir(tmp_path_factory) -> str:
    """A tiny generated Sudoku dataset (64 train puzzles x 3, 16 test), built once per session."""
    from dataset.build_sudoku_dataset import SudokuBuildConfig, build

    out = tmp_path_factory.mktemp("data") / "sudoku-tiny"
    build(SudokuBuildConfig(output_dir=str(out), num_train=64, num_test=16, min_clues=45, max_clues=50,
                            num_aug=2, seed=0, quiet=True))
    return str(out)


def compose(*overrides: str):
    """The config pretrain.py would see for these command-line overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base="1.3"):
        return hydra_compose("cfg_pretrain", overrides=list(overrides))
