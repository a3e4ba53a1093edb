"""One registry per component kind; a component registers itself next to its class."""
from __future__ import annotations

from uer.registry import register  # noqa: F401  (re-exported for the components)

EMBEDDINGS: dict[str, type] = {}
ENCODERS: dict[str, type] = {}
DECODERS: dict[str, type] = {}
TARGETS: dict[str, type] = {}

