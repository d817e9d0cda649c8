"""Property tests (Hypothesis) of config parsing: any override or YAML file gives a config or a
one-line ConfigError, never another exception; accepted floats are finite and seeds in range."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flrec.config import ConfigBase, option  # noqa: E402
from flrec.errors import ConfigError  # noqa: E402

BOUNDED = settings(
    max_examples=50, deadline=timedelta(seconds=10), database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Section(ConfigBase):
    lr: float = option(1e-4, "learning rate")
    seed: int = option(0, "seed")


@dataclass
class Cfg(ConfigBase):
    precision: Literal["no", "bf16", "auto"] = option("auto", "autocast")
    flag: bool = option(False, "a flag")
    name: str = option("x", "a name")
    rate: float = option(0.5, "a rate")
    steps: int | None = option(None, "steps")
    seeds: list[int] = option(factory=lambda: [1], help="seeds")
    weights: dict[str, float] = option(factory=dict, help="weights")
    train: Section = option(factory=Section, help="a section")


KEYS = [f.name for f in fields(Cfg)] + ["train.lr", "train.seed", "train.nope", "nope", "", "train.lr.x"]
VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from([".inf", "-.inf", ".nan", "nan", "1e999", "-1", "no", "yes", "on", "off", "[1, 2]",
                     "{a: 1}", "{a: .nan}", "null", "~", "!!binary aGVsbG8=", "&a [*a]", "'", "\x00"]),  # fmt: skip
)


def _check(cfg: Cfg) -> None:
    assert math.isfinite(cfg.rate) and math.isfinite(cfg.train.lr)
    assert all(math.isfinite(v) for v in cfg.weights.values())
    assert 0 <= cfg.train.seed < 2**32 and all(0 <= s < 2**32 for s in cfg.seeds)
    assert cfg.precision in ("no", "bf16", "auto") and isinstance(cfg.flag, bool) and isinstance(cfg.name, str)


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4), st.booleans())
def test_any_overrides_give_a_config_or_one_line_error(pairs, raw):
    overrides = [f"{k}{v}" if raw else f"{k}={v}" for k, v in pairs]
    try:
        cfg = Cfg.load(None, overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        _check(cfg)


@BOUNDED
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_yaml_file_gives_a_config_or_one_line_error(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(content)
        try:
            cfg = Cfg.load(path)
        except ConfigError as e:
            assert str(e) and "\n" not in str(e)
        else:
            _check(cfg)
