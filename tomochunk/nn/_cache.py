"""One per-process cache of loaded models, keyed by file path, modification time and variant.

Dask tasks carry only a model's path; each worker process loads the file once and keeps it
(PITFALLS.md: pickling a model into every task re-initialises TensorFlow per chunk).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .._log import get_logger
from ..errors import MissingError

log = get_logger(__name__)

#: models kept per process: enough for a multi-feature run (a few 2D models side by side)
#: while bounding memory when one long-lived worker sees many models in turn
MAX_MODELS = 4

_MODELS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
LOADS = 0  # models loaded by this process; read by tests through Client.run


def cached(path, loader, variant=None):
    """``loader(path)``, called once per process for each (file, mtime, ``variant``).

    Parameters
    ----------
    path : str or Path
        The model file.
    loader : callable
        Builds the model from the absolute path.
    variant : hashable, optional
        Distinguishes several models built from one file (e.g. a precision).

    Examples
    --------
    >>> from tomochunk.nn.models import load_model
    >>> model = cached("unet.keras", load_model)  # doctest: +SKIP
    """
    global LOADS
    path = os.path.abspath(os.fspath(path))
    try:
        key = (path, os.stat(path).st_mtime_ns, variant)
    except OSError:
        raise MissingError("no such model file", path) from None
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = loader(path)
            LOADS += 1
            log.info("loaded model %s%s in process %d", path, f" ({variant})" if variant else "", os.getpid())
        _keep(key, model)
    return model


def _keep(key, model):
    """Store as most recently used, dropping the least recently used beyond ``MAX_MODELS`` (lock held)."""
    _MODELS[key] = model
    _MODELS.move_to_end(key)
    while len(_MODELS) > MAX_MODELS:
        _MODELS.popitem(last=False)


def put(path, model, variant=None) -> None:
    """Record a model this process already holds, so that ``cached`` does not load it again."""
    path = os.path.abspath(os.fspath(path))
    with _LOCK:
        _keep((path, os.stat(path).st_mtime_ns, variant), model)
