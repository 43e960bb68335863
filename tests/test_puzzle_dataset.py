"""The puzzle iterator: seeded, resumable, sharded by rank; test mode covers every example once."""
import numpy as np
import pytest
import torch

from constants import IGNORE_LABEL_ID
from dataset.common import PuzzleDatasetMetadata, save_split
from dataset.puzzle_dataset import PuzzleDataset


@pytest.fixture
def multi_example_dir(tmp_path):
    """5 groups; group g has g+1 puzzles; puzzle p has (p % 3) + 1 examples; example e has inputs all e."""
    group_sizes = [g + 1 for g in range(5)]
    n_puzzles = sum(group_sizes)
    ex_sizes = [(p % 3) + 1 for p in range(n_puzzles)]
    n = sum(ex_sizes)
    inputs = np.repeat(np.arange(n)[:, None], 4, axis=1).astype(np.int32) % 50 + 1
    labels = inputs.copy()
    labels[:, 0] = 0  # ignore_label_id 0 -> -100
    arrays = {"inputs": inputs, "labels": labels,
              "puzzle_identifiers": np.arange(1, n_puzzles + 1, dtype=np.int32),
              "puzzle_indices": np.concatenate([[0], np.cumsum(ex_sizes)]).astype(np.int32),
              "group_indices": np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int32)}
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=51, seq_len=4,
                                 num_puzzle_identifiers=n_puzzles + 1, total_groups=5,
                                 mean_puzzle_examples=n / n_puzzles, total_puzzles=n_puzzles, sets=["all"])
    for split in ("train", "test"):
        save_split(tmp_path, split, meta, {"all": arrays})
    return str(tmp_path), arrays


def take(ds, k):
    it = iter(ds)
    return [next(it)[1] for _ in range(k)]


def test_training_stream_is_seeded(multi_example_dir):
    path, _ = multi_example_dir
    a = take(PuzzleDataset([path], "train", 4, seed=1), 6)
    b = take(PuzzleDataset([path], "train", 4, seed=1), 6)
    c = take(PuzzleDataset([path], "train", 4, seed=2), 6)
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_batches_are_full_and_labels_ignored(multi_example_dir):
    path, arrays = multi_example_dir
    for batch in take(PuzzleDataset([path], "train", 4, seed=0), 8):
        assert batch["inputs"].shape == (4, 4) and batch["inputs"].dtype == torch.int32
        assert (batch["labels"][:, 0] == IGNORE_LABEL_ID).all()
        # identifiers belong to the rows' puzzles
        for row, pid in zip(batch["inputs"][:, 0].tolist(), batch["puzzle_identifiers"].tolist()):
            example = row - 1
            puzzle = np.searchsorted(arrays["puzzle_indices"], example, side="right") - 1
            assert pid == arrays["puzzle_identifiers"][puzzle]


def test_each_epoch_visits_every_group_once(multi_example_dir):
    path, arrays = multi_example_dir
    ds = PuzzleDataset([path], "train", 1, seed=0)  # batch 1: one row per group
    group_of = np.searchsorted(arrays["group_indices"], np.searchsorted(arrays["puzzle_indices"],
                               np.arange(len(arrays["inputs"])), side="right") - 1, side="right") - 1
    rows = [b["inputs"][0, 0].item() - 1 for b in take(ds, 10)]
    assert sorted(group_of[rows[:5]]) == [0, 1, 2, 3, 4] and sorted(group_of[rows[5:]]) == [0, 1, 2, 3, 4]
    assert ds.state_dict() == {"epoch": 1, "position": 5, "size": 5}


def test_resume_from_state_continues_the_stream(multi_example_dir):
    path, _ = multi_example_dir
    full = take(PuzzleDataset([path], "train", 4, seed=3), 9)
    first = PuzzleDataset([path], "train", 4, seed=3)
    take(first, 4)
    resumed = PuzzleDataset([path], "train", 4, seed=3)
    resumed.load_state_dict(first.state_dict())
    rest = take(resumed, 5)
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(full[4:], rest))


def test_resume_into_a_training_set_of_another_size_is_a_clear_error(multi_example_dir, tmp_path):
    """The saved position reads the plan of a dataset of the saved size: in another (a rebuilt dataset) it
    continued silently on other data, or failed with an IndexError past the new end."""
    path, arrays = multi_example_dir
    first = PuzzleDataset([path], "train", 4, seed=3)
    take(first, 2)
    state = first.state_dict()
    assert state["position"] > 3  # past the end of the smaller set
    puzzles = int(arrays["group_indices"][3])  # the first 3 groups
    examples = int(arrays["puzzle_indices"][puzzles])
    smaller = {"inputs": arrays["inputs"][:examples], "labels": arrays["labels"][:examples],
               "puzzle_identifiers": arrays["puzzle_identifiers"][:puzzles],
               "puzzle_indices": arrays["puzzle_indices"][:puzzles + 1], "group_indices": arrays["group_indices"][:4]}
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=51, seq_len=4,
                                 num_puzzle_identifiers=puzzles + 1, total_groups=3,
                                 mean_puzzle_examples=examples / puzzles, total_puzzles=puzzles, sets=["all"])
    for split in ("train", "test"):
        save_split(tmp_path / "smaller", split, meta, {"all": smaller})
    rebuilt = PuzzleDataset([str(tmp_path / "smaller")], "train", 4, seed=3)
    with pytest.raises(ValueError, match="resume: the checkpoint's data position is in a pass over 5 items; this "
                                         "data has 3"):
        rebuilt.load_state_dict(state)
    resumed = PuzzleDataset([path], "train", 4, seed=3)
    resumed.load_state_dict(state)
    resumed.load_state_dict({"epoch": 0, "position": 2})  # a checkpoint from before the size was saved
    with pytest.raises(ValueError, match="data position is 9, past this data's 5 items"):
        resumed.load_state_dict({"epoch": 0, "position": 9})


def test_ranks_split_the_global_batch(multi_example_dir):
    path, _ = multi_example_dir
    whole = take(PuzzleDataset([path], "train", 4, seed=0), 5)
    parts = [take(PuzzleDataset([path], "train", 4, seed=0, rank=r, world_size=2), 5) for r in range(2)]
    for k in range(5):
        torch.testing.assert_close(torch.cat([parts[0][k]["inputs"], parts[1][k]["inputs"]]), whole[k]["inputs"])
    with pytest.raises(ValueError, match="divisible"):
        PuzzleDataset([path], "train", 5, world_size=2)


@pytest.mark.parametrize("world_size", [1, 2])
def test_test_mode_covers_every_example_once_with_padding(multi_example_dir, world_size):
    path, arrays = multi_example_dir
    seen = []
    for rank in range(world_size):
        for _, batch, effective in PuzzleDataset([path], "test", 4, rank=rank, world_size=world_size):
            real = (batch["labels"] != IGNORE_LABEL_ID).any(-1)
            assert batch["inputs"].shape[0] == 4 // world_size and effective <= 4
            assert (batch["inputs"][~real] == 0).all() and (batch["puzzle_identifiers"][~real] == 0).all()
            seen += (batch["inputs"][real, 0] - 1).tolist()
    assert sorted(seen) == list(range(len(arrays["inputs"])))


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        PuzzleDataset([str(tmp_path)], "train", 4)


def test_save_split_checks_every_block_of_rows(multi_example_dir, tmp_path, monkeypatch):
    """The range checks run block by block (no full-size masks); a bad value in a later block is still found."""
    import dataset.common

    _, arrays = multi_example_dir
    monkeypatch.setattr(dataset.common, "CHECK_ROWS", 4)
    meta_args = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=51, seq_len=4,
                     num_puzzle_identifiers=16, total_groups=5, total_puzzles=15,
                     mean_puzzle_examples=len(arrays["inputs"]) / 15, sets=["all"])
    for key, value, message in (("inputs", 51, r"inputs must lie in \[0, 51\), got 9..51 in rows 8..11"),
                                ("labels", -3, "labels must lie in")):
        bad = {**arrays, key: arrays[key].copy()}
        bad[key][9, 2] = value
        with pytest.raises(ValueError, match=message):
            save_split(tmp_path / key, "train", PuzzleDatasetMetadata(**meta_args), {"all": bad})


def test_two_datasets_with_puzzle_identifiers_warn_that_they_share_rows(multi_example_dir, tmp_path_factory):
    import shutil

    path, _ = multi_example_dir
    other = shutil.copytree(path, tmp_path_factory.mktemp("copy") / "other")
    with pytest.warns(UserWarning, match="share one numbering"):
        PuzzleDataset([path, str(other)], "train", global_batch_size=4)
