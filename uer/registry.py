"""Registries, on the ground floor: one per component kind, a name mapping to a class. Each class
registers itself next to its definition (`@register(ENCODERS, "lstm")`); the command-line choices
are read from here, so a new component is one class and one registration."""
from __future__ import annotations

from typing import Callable

EMBEDDINGS: dict[str, type] = {}
ENCODERS: dict[str, type] = {}
DECODERS: dict[str, type] = {}
TARGETS: dict[str, type] = {}
TOKENIZERS: dict[str, type] = {}
INSTANCE_BUILDERS: dict[str, type] = {}

#: the kinds by name, for the option schema (uer.options) and uer.components
REGISTRIES = {"embedding": EMBEDDINGS, "encoder": ENCODERS, "decoder": DECODERS, "target": TARGETS,
              "tokenizer": TOKENIZERS, "instance_builder": INSTANCE_BUILDERS}


def register(registry: dict, name: str) -> Callable:
    def deco(cls):
        assert name not in registry, f"{name} registered twice"
        registry[name] = cls
        cls.name = name
        return cls

    return deco
