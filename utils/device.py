"""Device selection and the `auto` policy for the compute dtype and torch.compile.

The policy reads what the device can do (CPU instruction sets, CUDA's bf16 support, a C++ compiler or
Triton), never its name:
  dtype:   bfloat16 where bf16 matmuls run in hardware (CUDA with native bf16; CPUs with AMX-BF16 or
           AVX512-BF16, or aarch64 BF16), float32 where bf16 would be emulated (slower than float32).
  compile: on CUDA when Triton is present; on a CPU when a C++ compiler is present and the run is long enough
           to earn back the compile time (CPU_COMPILE_MIN_STEPS); elsewhere eager. A missing compiler is a
           one-line note and eager mode, never a crash.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass

import torch

# Measured on the default job (python pretrain.py: TRM-MLP hidden 64, batch 64) on a 2-core AVX512-BF16 CPU:
# compiling costs ~55-70 s (training, plus a recompile for evaluation) and saves ~10-40% of a 0.1-0.4 s step, so
# it breaks even after ~1000 (bf16) to ~2000 (float32) steps. Bigger models break even sooner, so this bound is
# conservative: a short run stays eager and never loses to the compile time.
CPU_COMPILE_MIN_STEPS = 2000


def select_device(preference: str = "auto", flag: str | None = None) -> torch.device:
    """The device for `preference` (auto: cuda > mps > cpu). Errors name it as the user typed it: `flag PREFERENCE`
    for a command-line flag (generate.py's --device), else the config key `device=PREFERENCE`."""
    if preference != "auto":
        typed = f"{flag} {preference}" if flag else f"device={preference}"
        try:
            device = torch.device(preference)
        except RuntimeError:
            raise ValueError(f"{typed}: not a device (auto, cpu, cuda, cuda:N or mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{typed} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"{typed} requested but Apple MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 | aarch64
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's native bf16 matmul instruction sets (empty: bf16 is emulated by float32 code)."""
    found = []
    cpu = getattr(torch, "cpu", None)
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    flags = _cpuinfo_flags()
    for name, probe in probes.items():
        fn = getattr(cpu, probe, None)
        if (fn() if callable(fn) else False) or name in flags:
            found.append(name)
    if platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags:
        found.append("bf16")  # Armv8.6 BFMMLA/BFDOT
    return tuple(found)


@functools.cache
def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use, if one is installed."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    return next((path for name in names + ["c++", "g++", "clang++"] if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class Capabilities:
    """What the policy needs to know about a device."""
    native_bf16: bool  # bf16 matmuls in hardware
    compiler: bool  # torch.compile can generate kernels for it
    detail: str  # what was found, for the printed note


def capabilities(device: torch.device) -> Capabilities:
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        has_triton = importlib.util.find_spec("triton") is not None
        return Capabilities(native, has_triton, f"CUDA {'with' if native else 'without'} native bf16"
                                                f"{'' if has_triton else ', no Triton'}")
    if device.type == "cpu":
        features = cpu_bf16_features()
        compiler = cpu_compiler()
        return Capabilities(bool(features), compiler is not None,
                            f"CPU {'+'.join(features) or 'without native bf16 matmul'}"
                            f"{'' if compiler else ', no C++ compiler'}")
    # MPS and others: not measured here, so the safe choices (float32, eager)
    return Capabilities(False, False, f"{device.type}: float32 eager (bf16 and compile not measured there)")


def resolve_dtype(name: str, device: torch.device, training: bool = False) -> str:
    """'auto' for training -> bfloat16 where the device multiplies bf16 in hardware, else float32.

    For inference (generate.py) 'auto' stays bfloat16 on CUDA and float32 elsewhere: on a CPU the tokens then
    do not depend on the batch size (bf16 rounding does) and match float32 runs."""
    if name != "auto":
        return name
    if not training:
        return "bfloat16" if device.type == "cuda" else "float32"
    return "bfloat16" if capabilities(device).native_bf16 else "float32"


def resolve_compile(setting: bool | str, device: torch.device, total_steps: int | None = None) -> tuple[bool, str]:
    """-> (compile?, why). setting: true | false | 'auto'; total_steps: the run's planned optimizer steps.

    Never fails: without a compiler it falls back to eager with a note; env DISABLE_COMPILE=1 turns it off.
    """
    if setting not in (True, False, "true", "false", "auto"):
        raise ValueError(f"compile must be true, false or auto, got {setting!r}")
    if os.environ.get("DISABLE_COMPILE"):
        return False, "eager (DISABLE_COMPILE is set)"
    if setting is False or setting == "false":
        return False, "eager (compile=false)"
    caps = capabilities(device)
    if not caps.compiler:
        need = "Triton" if device.type == "cuda" else "a C++ compiler" if device.type == "cpu" else "a tested backend"
        return False, f"eager: torch.compile needs {need}, none found on this {device.type}"
    if setting is True or setting == "true":
        return True, "compiled (compile=true)"
    if device.type == "cuda":
        return True, "compiled (auto: CUDA)"
    if total_steps is not None and total_steps < CPU_COMPILE_MIN_STEPS:
        return False, f"eager (auto: {total_steps} steps < {CPU_COMPILE_MIN_STEPS}, too few to earn back the compile time)"
    return True, "compiled (auto: a long CPU run)"


def describe_policy(dtype: str, compile_note: str, device: torch.device) -> str:
    """One line for the start of a run: what was chosen and from what."""
    return f"policy: {dtype}, {compile_note}; {capabilities(device).detail}"
