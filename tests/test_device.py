"""The device policy (auto dtype and compile) from detected capabilities, and bf16 training on the CPU."""
import pytest
import torch
import yaml

import utils.device as ud
from conftest import compose
from models import build_model
from pretrain import train
from utils.optim import build_optimizers

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def amx_cpu(monkeypatch):
    monkeypatch.setattr(ud, "cpu_bf16_features", lambda: ("amx_bf16", "avx512_bf16"))
    monkeypatch.setattr(ud, "cpu_compiler", lambda: "/usr/bin/g++")
    monkeypatch.delenv("DISABLE_COMPILE", raising=False)


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(ud, "cpu_bf16_features", lambda: ())
    monkeypatch.setattr(ud, "cpu_compiler", lambda: "/usr/bin/g++")
    monkeypatch.delenv("DISABLE_COMPILE", raising=False)


@pytest.fixture
def cuda_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    real_find_spec = ud.importlib.util.find_spec
    monkeypatch.setattr(ud.importlib.util, "find_spec", lambda name: object() if name == "triton" else real_find_spec(name))
    monkeypatch.delenv("DISABLE_COMPILE", raising=False)


def test_amx_cpu_gets_bf16_and_compiles_long_runs_only(amx_cpu):
    assert ud.resolve_dtype("auto", CPU, training=True) == "bfloat16"
    short, note = ud.resolve_compile("auto", CPU, total_steps=ud.CPU_COMPILE_MIN_STEPS - 1)
    assert not short and "too few" in note
    assert ud.resolve_compile("auto", CPU, total_steps=ud.CPU_COMPILE_MIN_STEPS)[0]
    assert "amx_bf16" in ud.describe_policy("bfloat16", note, CPU)


def test_plain_cpu_stays_float32(plain_cpu):
    assert ud.resolve_dtype("auto", CPU, training=True) == "float32"
    assert ud.resolve_dtype("bfloat16", CPU, training=True) == "bfloat16"  # an explicit choice is kept
    assert "without native bf16" in ud.capabilities(CPU).detail


def test_inference_auto_stays_float32_on_a_cpu(amx_cpu):
    assert ud.resolve_dtype("auto", CPU) == "float32"  # generation: tokens independent of the batch size


def test_cuda_gets_bf16_and_compile(cuda_gpu, monkeypatch):
    assert ud.resolve_dtype("auto", CUDA, training=True) == "bfloat16"
    assert ud.resolve_compile("auto", CUDA, total_steps=10) == (True, "compiled (auto: CUDA)")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert ud.resolve_dtype("auto", CUDA, training=True) == "float32"  # emulated bf16 (pre-Ampere) is not worth it


def test_no_compiler_means_eager_with_a_note(amx_cpu, monkeypatch):
    monkeypatch.setattr(ud, "cpu_compiler", lambda: None)
    for setting in ("auto", True, "true"):
        use, note = ud.resolve_compile(setting, CPU, total_steps=10**6)
        assert not use and "C++ compiler" in note
    assert "no C++ compiler" in ud.capabilities(CPU).detail


def test_compile_off_switches(amx_cpu, monkeypatch):
    assert ud.resolve_compile(False, CPU, 10**6) == (False, "eager (compile=false)")
    assert ud.resolve_compile(True, CPU, 1)[0]  # an explicit request is honoured even for a short run
    monkeypatch.setenv("DISABLE_COMPILE", "1")
    assert not ud.resolve_compile(True, CPU, 10**6)[0]
    with pytest.raises(ValueError, match="compile must be"):
        ud.resolve_compile("sometimes", CPU, 10)


def test_a_bad_device_is_named_as_the_user_typed_it(monkeypatch):
    with pytest.raises(ValueError, match=r"^device=gpu: not a device \(auto, cpu, cuda, cuda:N or mps\)$"):
        ud.select_device("gpu")  # the config key (pretrain.py)
    with pytest.raises(ValueError, match=r"^--device gpu: not a device"):
        ud.select_device("gpu", "--device")  # an argparse flag (generate.py, benchmarks)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device cuda:1 requested but CUDA is not available$"):
        ud.select_device("cuda:1", "--device")


def test_cpu_features_are_detected_from_the_cpu_not_its_name(monkeypatch):
    ud.cpu_bf16_features.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(ud, "_cpuinfo_flags", lambda: {"avx512f", "avx512_bf16"})
    try:
        assert ud.cpu_bf16_features() == ("avx512_bf16",)
        ud.cpu_bf16_features.cache_clear()
        monkeypatch.setattr(ud, "_cpuinfo_flags", lambda: {"avx2", "fma"})
        assert ud.cpu_bf16_features() == ()
    finally:
        ud.cpu_bf16_features.cache_clear()


def test_run_prints_and_records_the_policy(sudoku_dir, tmp_path, plain_cpu, capsys):
    cfg = compose(f"data_paths=[{sudoku_dir}]", f"checkpoint_dir={tmp_path}", "arch.hidden_size=16", "arch.num_heads=2",
                  "arch.puzzle_emb_len=1", "arch.H_cycles=1", "arch.L_cycles=1", "arch.halt_max_steps=2",
                  "global_batch_size=16", "logger.mode=disabled", "epochs=1", "eval_interval=1", "max_steps=2",
                  "run_name=policy", "device=cpu")
    train(cfg)
    assert "policy: float32, eager (auto:" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "Sudoku-tiny-ACT-torch" / "policy" / "config.yaml").read_text())
    assert saved["arch"]["forward_dtype"] == "float32" and saved["compile"] is False


def test_bf16_training_on_cpu_tracks_float32():
    """A few optimizer steps of a tiny TRM in bf16 on the CPU: the loss stays finite and close to float32's."""
    arch = dict(name="trm", loss={"loss_type": "stablemax_cross_entropy"}, hidden_size=32, num_heads=2, L_layers=2,
                H_cycles=2, L_cycles=2, halt_max_steps=2, puzzle_emb_ndim=32, puzzle_emb_len=1, seq_len=16,
                vocab_size=6, num_puzzle_identifiers=4)
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(1, 6, (8, 16), generator=g), "labels": torch.randint(1, 6, (8, 16), generator=g),
             "puzzle_identifiers": torch.randint(1, 4, (8,), generator=g)}
    losses = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = build_model({**arch, "forward_dtype": dtype}, batch_size=8)
        optimizers, _ = build_optimizers(model, {"name": "adam_atan2"}, 3e-3, 0.1, 0.9, 0.95, 3e-3, 0.1)
        carry, losses[dtype] = model.initial_carry(batch), []
        for _ in range(12):
            carry, loss, _, _ = model(carry, batch)
            (loss / 8).backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses[dtype].append(loss.item() / 8)
    fp32, bf16 = torch.tensor(losses["float32"]), torch.tensor(losses["bfloat16"])
    assert torch.isfinite(bf16).all()
    assert bf16[-1] < bf16[0]  # it learns
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
