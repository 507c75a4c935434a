"""Old home of the TIRF workflow, now :mod:`tomochunk.workflows.tirf`; every name is forwarded.

The workflow sits above ``nn`` (it trains and segments), so this module must not import it
statically: names are looked up on first use (a lazy forward), which keeps ``ops`` below
``nn`` and ``workflows``.
"""

from __future__ import annotations

import importlib

_HOME = "tomochunk.workflows.tirf"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(_HOME)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'tomochunk.ops.tirf' has no attribute {name!r}") from None


def __dir__():
    return sorted(importlib.import_module(_HOME).__all__)
