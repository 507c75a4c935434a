"""One per-process cache of loaded models, keyed by file path, modification time and variant.

Dask tasks carry only a model's path; each worker process loads the file once and keeps it
(PITFALLS.md: pickling a model into every task re-initialises TensorFlow per chunk).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict

from .._log import get_logger
from ..errors import MissingError, ValueProblem
from .archive import FeatureModel, load_archive
from .models import load_model, save_model, with_dtype

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
    >>> import numpy as np
    >>> np.save("/tmp/tomochunk-cache-doctest.npy", np.arange(3))
    >>> cached("/tmp/tomochunk-cache-doctest.npy", np.load).tolist()
    [0, 1, 2]
    >>> cached("/tmp/tomochunk-cache-doctest.npy", None).tolist()  # not loaded again
    [0, 1, 2]
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


# --- one loader per kind ------------------------------------------------------------------


def keras_model(path, precision="float32"):
    """A 3D Keras model (``.keras`` or DeepFinder ``.h5``), loaded once per process and precision.

    ``precision="bfloat16"`` gives the same weights under Keras' ``mixed_bfloat16``
    policy (convolutions in bfloat16, softmax in float32).

    Examples
    --------
    >>> model = keras_model("unet.keras")  # doctest: +SKIP
    """
    if precision == "float32":
        return cached(path, load_model)
    return cached(path, lambda p: in_precision(load_model(p), precision, p), variant=precision)


def in_precision(model, precision, path=None):
    """``model`` under the ``mixed_<precision>`` policy (a DeepFinder U-Net), or a one-line error."""
    try:
        return with_dtype(model, "mixed_" + precision)
    except Exception as exc:
        raise ValueProblem(f"precision={precision!r} needs a DeepFinder U-Net model ({exc})", path) from None


def archive_model(ref):
    """A 2D/2.5D model archive (:class:`~tomochunk.nn.archive.FeatureModel`), loaded once per process.

    ``ref`` is an archive path, ``(path, code_file)`` for an architecture defined in a file
    the user passed explicitly (``allow_code``), or a FeatureModel (returned as is).

    Examples
    --------
    >>> fm = archive_model("membrane.tcm")  # doctest: +SKIP
    """
    if isinstance(ref, FeatureModel):
        return ref
    if isinstance(ref, tuple):
        path, code = ref
        return cached(path, lambda p: load_archive(p, allow_code=code), variant=("archive", str(code)))
    return cached(ref, load_archive, variant="archive")


# --- models shipped through the scheduler ------------------------------------------------

_SHIPPED: OrderedDict = OrderedDict()


def model_bytes(model) -> bytes:
    """A Keras model as bytes (its ``.keras`` file: config and weights), to ship to workers."""
    with tempfile.TemporaryDirectory(prefix="tomochunk-model-") as d:
        path = os.path.join(d, "model.keras")
        save_model(model, path)
        with open(path, "rb") as f:
            return f.read()


def put_token(token: str, model) -> None:
    """Record a model this process already holds under ``token`` (see :func:`shipped_model`)."""
    with _LOCK:
        _keep_shipped(token, model)


def shipped_model(token: str, blob, precision="float32"):
    """The model whose ``.keras`` bytes are ``blob``, built once per process for each ``token``.

    ``blob`` is the bytes themselves, or a callable returning them (only called when this
    process has not built the model yet).

    Examples
    --------
    >>> blob = model_bytes(keras_model_object)  # doctest: +SKIP
    >>> model = shipped_model("m-1234", blob)  # doctest: +SKIP
    """
    global LOADS
    key = (token, precision)
    with _LOCK:
        model = _SHIPPED.get(key)
        if model is None:
            base = _SHIPPED.get((token, "float32"))
            if base is None:
                data = blob() if callable(blob) else blob
                with tempfile.TemporaryDirectory(prefix="tomochunk-model-") as d:
                    path = os.path.join(d, "model.keras")
                    with open(path, "wb") as f:
                        f.write(data)
                    base = load_model(path)
                LOADS += 1
                log.info("built shipped model %s in process %d", token, os.getpid())
                _keep_shipped((token, "float32"), base)
            model = base if precision == "float32" else in_precision(base, precision, token)
        _keep_shipped(key, model)
    return model


def _keep_shipped(key, model):
    if isinstance(key, str):
        key = (key, "float32")
    _SHIPPED[key] = model
    _SHIPPED.move_to_end(key)
    while len(_SHIPPED) > MAX_MODELS:
        _SHIPPED.popitem(last=False)
