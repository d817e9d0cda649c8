"""The weight dtypes a config may name (``dtype: bfloat16``), mapped to torch dtypes in one place."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
