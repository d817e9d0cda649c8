"""Which reduced precision the hardware runs natively: mixed-precision training (``train.mixed_precision``)
and the weight dtype of ranking (``inference_dtype``) both resolve ``auto`` here."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_mixed_precision(setting: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a bf16 GPU or a CPU with native bf16 (AVX512-BF16/AMX), else ``"no"``.

    On CPU, torch only reports the vector ISA (e.g. "AVX512"), and oneDNN also runs bf16 on plain
    AVX512 by emulation (slower than fp32), so we read the native flags from /proc/cpuinfo and then
    confirm a tiny autocast matmul works.
    """
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "no"
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return "no"
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ok = (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    except RuntimeError:
        ok = False
    return "bf16" if ok else "no"


def resolve_inference_dtype(name: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` where the hardware runs it natively, else ``"float32"``; others unchanged."""
    if name != "auto":
        return name
    return "bfloat16" if resolve_mixed_precision("auto") == "bf16" else "float32"
