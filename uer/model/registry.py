"""One registry per component kind; a component registers itself next to its class."""
from __future__ import annotations

from typing import Callable

EMBEDDINGS: dict[str, type] = {}
ENCODERS: dict[str, type] = {}
DECODERS: dict[str, type] = {}
TARGETS: dict[str, type] = {}


def register(registry: dict, name: str) -> Callable:
    def deco(cls):
        assert name not in registry, f"{name} registered twice"
        registry[name] = cls
        return cls

    return deco
