"""Typed configs: one dataclass per stage, YAML + ``key=value`` overrides, run metadata.

Every stage config subclasses :class:`ConfigBase`. Each field carries a help text in its
metadata (``field(default=..., metadata={"help": ...})`` via :func:`option`), cross-field checks
live in ``__post_init__`` and raise :class:`~flrec.errors.ConfigError` with the fix. Unknown keys
are rejected with the list of valid ones (a typo never silently falls back to a default).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from flrec.errors import ConfigError
from flrec.utils.io import atomic_write_json, atomic_write_text

T = TypeVar("T", bound="ConfigBase")


class YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case) are booleans.

    YAML 1.1 also reads yes/no/on/off as booleans, so ``mixed_precision: no`` would arrive as False
    and could never match the string choice "no"; boolean fields still accept yes/no (see _coerce).
    """


YAMLLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_MAX_SEED = 2**32 - 1  # numpy's legacy seeding, and thus many libraries, take 0..2**32-1


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (errors are one line)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _error(message: str) -> ConfigError:
    """A ConfigError whose message stays on one line whatever the user's keys and values hold."""
    return ConfigError(one_line(message))


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text with :class:`YAMLLoader`; a ConfigError naming ``where`` if it does not parse."""
    try:
        return yaml.load(text, Loader=YAMLLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise _error(f"{where}: not valid YAML ({first})") from None
    except RecursionError:
        raise _error(f"{where}: YAML nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Write ``key=value`` overrides into the mapping ``data`` (values read as YAML) and return it.

    Dotted keys address nested sections: ``train.lr=1e-4`` sets ``data["train"]["lr"]``. Values are
    what YAML reads (``1e-4`` stays a string there); :meth:`ConfigBase.from_dict` coerces them to the
    fields' types.

    >>> apply_overrides({}, ["train.lr=1e-4", "backbone=tiny:llama", "train.mixed_precision='no'"])
    {'train': {'lr': '1e-4', 'mixed_precision': 'no'}, 'backbone': 'tiny:llama'}
    """
    for ov in overrides:
        if "=" not in ov:
            raise _error(f"override '{ov}' is not key=value (e.g. train.lr=1e-4)")
        k, v = ov.split("=", 1)
        *parents, leaf = k.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _error(f"override '{ov}': '{part}' is not a section")
        node[leaf] = load_yaml(v, f"override '{ov}'") if v.strip() else ""
    return data


def _is_seed_key(key: str) -> bool:
    return any(part == "seed" or part.endswith(("_seed", "seeds")) for part in key.split("."))


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:  # noqa: A002
    """A dataclass field with a help text (shown by ``flrec ... --help-config``)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, with a clear error."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                last = e
        raise last or _error(f"config key '{key}': cannot parse {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool):
            # A value written as yes/no/on/off/true/false that a YAML 1.1 parser turned into a bool:
            # map it back to the one choice spelled that way (mixed_precision=no).
            words = ("true", "yes", "on") if value else ("false", "no", "off")
            match = [a for a in args if isinstance(a, str) and a.lower() in words]
            if len(match) == 1:
                return match[0]
        if isinstance(value, bool) or value not in args:
            raise _error(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        elif isinstance(value, int | float | bool):  # `seeds=1` on the CLI parses as a scalar
            value = [value]
        if not isinstance(value, list | tuple):
            raise _error(f"config key '{key}': expected a list (comma-separated on the CLI), got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _error(f"config key '{key}': expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)  # values get the same coercion as top-level keys
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise _error(f"config key '{key}': expected true/false, got {value!r}")
    if isinstance(typ, type) and issubclass(typ, ConfigBase):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise _error(f"config key '{key}': expected a mapping of {typ.__name__} keys, got {value!r}")
        return typ.from_dict(value, source=f"config section '{key}'", prefix=f"{key}.")
    if typ in (int, float, str):
        return _scalar(value, typ, key)
    return value


def _scalar(value: Any, typ: type, key: str) -> Any:
    """``value`` as int/float/str; non-finite floats and out-of-range seeds are refused."""
    if isinstance(value, dict | list | tuple) or (typ is not str and isinstance(value, bool)):
        raise _error(f"config key '{key}': expected {typ.__name__}, got {value!r}")
    if typ is str:
        return str(value).lower() if isinstance(value, bool) else str(value)
    try:
        if isinstance(value, str):
            value = value.strip()
            number = float(value) if typ is float or not value.lstrip("+-").isdigit() else int(value)
        else:
            number = value
        number = float(number) if typ is float else number
        if typ is int and isinstance(number, float):
            if not (math.isfinite(number) and number.is_integer()):
                raise ValueError
            number = int(number)
        elif typ is int:
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise _error(f"config key '{key}': expected {typ.__name__}, got {value!r}") from None
    if typ is float and not math.isfinite(number):
        raise _error(
            f"config key '{key}': {value!r} is not a finite number; give a finite value (e.g. 1e-4)"
        )
    if typ is int and _is_seed_key(key) and not 0 <= number <= _MAX_SEED:
        raise _error(f"config key '{key}': seed {number} must be in 0..{_MAX_SEED}")
    return number


@dataclass
class ConfigBase:
    """Base for stage configs: YAML loading, overrides, validation, help."""

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", prefix: str = "") -> T:
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)  # YAML keys may be numbers too
        if unknown:
            raise _error(
                f"{source}: unknown key '{unknown[0]}' for {cls.__name__}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
        """Build from an optional YAML file plus ``key=value`` overrides (overrides win)."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise _error(f"config file {p} not found; pass an existing YAML file to --config")
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise _error(f"{p}: not a UTF-8 text file; pass a YAML config file to --config") from None
            except OSError as e:
                raise _error(f"{p}: cannot be read ({e.strerror or type(e).__name__})") from None
            loaded = load_yaml(text, str(p)) or {}
            if not isinstance(loaded, dict):
                raise _error(f"{p}: expected a mapping of key: value at the top level")
            data.update(loaded)
        apply_overrides(data, overrides or [])
        return cls.from_dict(data, source=str(path) if path else "overrides")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict(), default=str)), sort_keys=False)

    @classmethod
    def describe(cls) -> str:
        """Human-readable list of keys with defaults and help."""
        lines = [f"{cls.__name__} keys:"]
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], ConfigBase):
                sub = hints[f.name].describe().replace("\n", "\n    ")
                lines.append(f"  {f.name}:  (section; override as {f.name}.KEY=VALUE)\n    {sub}")
                continue
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else "<required>"
            )
            lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
        return "\n".join(lines)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


_PACKAGES = ("flrec", "torch", "transformers", "accelerate", "peft", "numpy", "scipy", "gguf", "safetensors")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


PATH_KEYS = ("data", "from_run", "backbone")  # run-config keys naming local files or folders


def save_run_metadata(run_dir: str | Path, config: ConfigBase | dict[str, Any], stage: str) -> None:
    """Write ``config.yaml`` (resolved) and ``run_info.json`` (git SHA, versions, argv) into run_dir."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict() if isinstance(config, ConfigBase) else dict(config)
    for key in PATH_KEYS:  # stored absolute: the run can be exported or continued from any directory
        v = cfg.get(key)
        if isinstance(v, str) and v and not Path(v).is_absolute() and Path(v).exists():
            cfg[key] = str(Path(v).resolve())
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False))
    atomic_write_json(
        run_dir / "run_info.json",
        {
            "stage": stage,
            "config_class": type(config).__name__,
            "git_sha": git_sha(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "argv": sys.argv,
            "cwd": os.getcwd(),
        },
    )
