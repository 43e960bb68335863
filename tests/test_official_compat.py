"""Our model loads a checkpoint written by the official TRM code and reproduces its outputs."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models import build_model
from models.trm import TRMConfig
from utils.checkpoint import load_model_weights

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_model():
    cfg = json.loads((FIXTURES / "official_trm_att" / "config.json").read_text())
    batch_size = cfg.pop("batch_size")
    return build_model({"name": "trm", "loss": {"loss_type": "stablemax_cross_entropy"}, **cfg}, batch_size=batch_size)


def test_official_checkpoint_reproduces_all_act_steps():
    model = fixture_model()
    load_model_weights(model, str(FIXTURES / "official_trm_att" / "step_0"))
    expected = load_file(FIXTURES / "official_trm_att" / "expected.safetensors")
    batch = {k.removeprefix("batch."): v for k, v in expected.items() if k.startswith("batch.")}
    model.eval()
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for k in range(4):
            carry, loss, _, out = model(carry, batch)
            torch.testing.assert_close(out["logits"], expected[f"step{k}.logits"], atol=1e-4, rtol=0)
            torch.testing.assert_close(out["q_halt_logits"], expected[f"step{k}.q_halt_logits"], atol=1e-4, rtol=0)
            assert abs(loss.item() - expected[f"step{k}.loss"].item()) < 1e-4
    assert carry.halted.all()  # halt_max_steps = 4 in eval


def parse_key_file():
    """-> list of (variant settings, {key: shape}, trainable parameter count) from official_trm_keys.txt."""
    blocks, current = [], None
    for line in (FIXTURES / "official_trm_keys.txt").read_text().splitlines():
        if m := re.match(r"# Sudoku config.*\((arch.mlp_t=(\w+)), pos_encodings=(\w+)\)", line):
            current = ({"mlp_t": m.group(2) == "True", "pos_encodings": m.group(3)}, {}, None)
            blocks.append(current)
        elif m := re.match(r"# trainable parameters .*: (\d+)", line):
            blocks[-1] = (current[0], current[1], int(m.group(1)))
        elif line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            current[1][key.removeprefix("_orig_mod.")] = list(json.loads(shape))
    return blocks


@pytest.mark.parametrize("variant", [0, 1], ids=["attention", "mlp_t"])
def test_state_dict_matches_official_key_layout(variant):
    settings, keys, n_trainable = parse_key_file()[variant]
    config = dict(name="trm", hidden_size=512, num_heads=8, L_layers=2, seq_len=81, vocab_size=11,
                  num_puzzle_identifiers=1001, puzzle_emb_ndim=512, forward_dtype="float32", **settings)
    model = build_model(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == keys
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_trainable


def test_config_rejects_unknown_option():
    with pytest.raises(ValueError, match="unknown model option"):
        TRMConfig.from_dict({"seq_len": 4, "vocab_size": 3, "hiden_size": 8})
