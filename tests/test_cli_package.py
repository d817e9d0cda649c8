"""The CLI package's shared parts: one override assembly (``load_config``) and one help formatter."""

from __future__ import annotations

import argparse

from flrec.cli import build_parser
from flrec.cli.common import DefaultsHelp, load_config


class _Recorder:
    @classmethod
    def load(cls, path, overrides):
        return path, overrides


def test_load_config_orders_first_user_flags_force():
    a = argparse.Namespace(config="c.yaml", overrides=["x=1"], limit=3, split=None, force=True)
    path, overrides = load_config(_Recorder, a, flags=("limit", "split"), force="overwrite", first=["from_run=r"])
    assert path == "c.yaml" and overrides == ["from_run=r", "x=1", "limit=3", "overwrite=true"]
    a.force = False
    assert load_config(_Recorder, a)[1] == ["x=1"]


def test_defaults_help_shows_a_default_only_where_the_help_does_not_say_it():
    p = argparse.ArgumentParser(formatter_class=DefaultsHelp)
    p.add_argument("--a", default=5, help="alpha")
    p.add_argument("--b", default=5, help="beta (default 5)")
    p.add_argument("--c", help="gamma")
    p.add_argument("--d", action="store_true", help="delta")
    text = p.format_help()
    assert "alpha (default: 5)" in text and "(default: 5)" not in text.split("alpha (default: 5)")[1]
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_command_has_help():
    def walk(p, path):
        assert p.format_help(), path
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sp in action.choices.items():
                    yield [*path, name]
                    yield from walk(sp, [*path, name])

    commands = list(walk(build_parser(), []))
    assert ["train", "sft"] in commands and ["analyze", "factors"] in commands and ["serve"] in commands
    assert len(commands) == 26
