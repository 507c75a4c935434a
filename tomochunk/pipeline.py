"""Old home of the YAML pipeline, now :mod:`tomochunk.workflows.pipeline`; every name is forwarded.

The pipeline sits above ``nn``, so this top-level module forwards its names lazily
(looked up on first use) instead of importing it.
"""

from __future__ import annotations

import importlib

_HOME = "tomochunk.workflows.pipeline"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(importlib.import_module(_HOME), name)
    except AttributeError:
        raise AttributeError(f"module 'tomochunk.pipeline' has no attribute {name!r}") from None
