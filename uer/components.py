"""Registers uer's own components: importing a kind's module fills its registry in uer.registry.
The entry points call `load` before they build a parser, whose choices are read from the registries."""
from __future__ import annotations

import importlib

#: where each kind's built-in components are defined
MODULES = {"embedding": "uer.model", "encoder": "uer.model", "decoder": "uer.model", "target": "uer.model",
           "tokenizer": "uer.tokenizers", "instance_builder": "uer.data.builders"}


def load(*kinds: str) -> None:
    """Import the modules of these kinds (all when none is named)."""
    for module in dict.fromkeys(MODULES[k] for k in (kinds or MODULES)):
        importlib.import_module(module)
