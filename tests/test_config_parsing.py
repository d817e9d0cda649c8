"""Config parsing: hostile values give one-line ConfigErrors; YAML's yes/no do not become booleans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from flrec.config import ConfigBase, option
from flrec.errors import ConfigError


@dataclass
class Inner(ConfigBase):
    lr: float = option(1e-4, "learning rate")
    seed: int = option(0, "seed")


@dataclass
class Cfg(ConfigBase):
    precision: Literal["no", "bf16", "auto"] = option("auto", "autocast")
    switch: Literal["on", "off", "auto"] = option("auto", "a switch")
    flag: bool = option(False, "a boolean")
    name: str = option("x", "a name")
    rate: float = option(0.5, "a rate")
    rates: list[float] = option(factory=list, help="rates")
    steps: int | None = option(None, "steps")
    data_seed: int | None = option(None, "seed")
    seeds: list[int] = option(factory=lambda: [1], help="seeds")
    method_seeds: dict[str, list[int]] = option(factory=dict, help="seeds per method")
    inner: Inner = option(factory=Inner, help="a section")


def test_yaml_no_yes_on_off_stay_strings_for_choices_and_names(tmp_path):
    cfg = Cfg.load(None, ["precision=no", "switch=off", "name=no", "flag=yes"])
    assert (cfg.precision, cfg.switch, cfg.name, cfg.flag) == ("no", "off", "no", True)
    f = tmp_path / "c.yaml"
    f.write_text("precision: no\nswitch: on\nname: yes\nflag: off\n")
    cfg = Cfg.load(f)
    assert (cfg.precision, cfg.switch, cfg.name, cfg.flag) == ("no", "on", "yes", False)
    # A bool from another YAML 1.1 parser is mapped back to the one choice spelled that way.
    assert Cfg.from_dict({"precision": False}).precision == "no"
    with pytest.raises(ConfigError, match="'precision'.*not one of"):
        Cfg.from_dict({"precision": True})  # no choice means "true"


def test_real_mixed_precision_no_is_settable():
    from flrec.training.trainer import TrainConfig

    assert TrainConfig.load(None, ["mixed_precision=no"]).mixed_precision == "no"


@pytest.mark.parametrize(
    "override, key",
    [("rate=.inf", "rate"), ("rate=nan", "rate"), ("rate=-.inf", "rate"), ("rates=1,nan", "rates"),
     ("inner.lr=.inf", "inner.lr"), ("inner.lr=1e999", "inner.lr")],
)  # fmt: skip
def test_non_finite_floats_are_refused_with_the_dotted_key(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*not a finite number"):
        Cfg.load(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [("inner.seed=-1", "inner.seed"), ("data_seed=-5", "data_seed"), ("seeds=1,-1", "seeds"),
     ("inner.seed=4294967296", "inner.seed")],
)  # fmt: skip
def test_seeds_must_be_in_range(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}'.*0..4294967295"):
        Cfg.load(None, [override])
    cfg = Cfg.load(None, ["inner.seed=4294967295", "method_seeds={flr: [0, 1]}"])
    assert cfg.inner.seed == 4294967295 and cfg.method_seeds == {"flr": [0, 1]}


@pytest.mark.parametrize(
    "override", ["steps=1e999", "steps=1.5", "steps=true", "rate=[1, 2]", "name={a: 1}", "rate=["]
)
def test_bad_scalars_are_one_line_errors(override):
    with pytest.raises(ConfigError) as e:
        Cfg.load(None, [override])
    assert "\n" not in str(e.value) and override.split("=")[0] in str(e.value)


def test_numbers_still_parse():
    cfg = Cfg.load(None, ["steps=1e3", "rate=1e-4", "inner.lr=3", "seeds=1,2"])
    assert (cfg.steps, cfg.rate, cfg.inner.lr, cfg.seeds) == (1000, 1e-4, 3.0, [1, 2])
    assert isinstance(cfg.steps, int) and isinstance(cfg.inner.lr, float)


def test_binary_unreadable_and_odd_yaml_files(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="model.bin.*not a UTF-8 text file"):
        Cfg.load(binary)
    control = tmp_path / "ctl.yaml"
    control.write_text("name: a\x07b\n")
    with pytest.raises(ConfigError, match="ctl.yaml: not valid YAML"):
        Cfg.load(control)
    numeric_keys = tmp_path / "num.yaml"
    numeric_keys.write_text("1: 2\nname: x\n")
    with pytest.raises(ConfigError, match="unknown key '1'"):
        Cfg.load(numeric_keys)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        Cfg.load(deep)
