"""Registries: a component kind maps names to classes; each class registers itself once, next to
its definition, and the command-line choices are read from the registry."""
from __future__ import annotations

from typing import Callable


def register(registry: dict, name: str) -> Callable:
    def deco(cls):
        assert name not in registry, f"{name} registered twice"
        registry[name] = cls
        cls.name = name
        return cls

    return deco
