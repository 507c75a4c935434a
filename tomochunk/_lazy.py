"""Lazy public names for packages: one ``__getattr__``/``__dir__`` pair built from a name table.

``import tomochunk`` (and ``tomochunk.nn``, ``tomochunk.workflows``) stays cheap: a name's module,
and TensorFlow with it, is imported on first use.
"""

from __future__ import annotations

import importlib


def lazy_api(package: str, api: dict, modules=()):
    """``(__getattr__, __dir__)`` for ``package``: ``api`` maps names to modules, ``modules`` are
    subpackages returned themselves.

    Examples
    --------
    >>> getattr_, dir_ = lazy_api("pkg", {"sqrt": "math"})
    >>> getattr_("sqrt")(4.0), dir_()
    (2.0, ['sqrt'])
    >>> getattr_("nope")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'nope'
    """
    names = sorted(set(api) | set(modules))

    def __getattr__(name: str):
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        try:
            module = api[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    def __dir__():
        return names

    return __getattr__, __dir__
