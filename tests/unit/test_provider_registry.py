"""The registry is the only list of providers: every adapter module registers, names agree."""

from __future__ import annotations

import pkgutil

import pytest

import providers
from providers import base


def test_every_adapter_module_registers_one_class_named_after_it() -> None:
    modules = {
        m.name for m in pkgutil.iter_modules(providers.__path__) if not m.name.startswith("_")
    } - {"base"}
    names = base.provider_names()
    assert set(names) == modules
    for name in names:
        cls = base.get_provider_class(name)
        assert cls.name == name == cls.__module__.rsplit(".", 1)[-1]
        assert callable(cls.from_settings) and callable(vars(cls).get("fetch"))


def test_registering_a_second_class_under_a_taken_name_fails() -> None:
    class Impostor:
        name = "replay"

    with pytest.raises(ValueError, match="registered twice"):
        base.register(Impostor)  # type: ignore[type-var]


def test_unknown_provider_lists_valid_names_and_near_matches() -> None:
    with pytest.raises(base.UnknownProvider, match=r"Did you mean: replay\?.*Known providers"):
        base.get_provider_class("replya")
