"""How segmentation tasks reach their network: a file path, or a Keras model shipped once.

A task carries a :class:`ModelHandle` (a path or a token, a few bytes) and loads the network
from the per-process cache (:mod:`tomochunk.nn._cache`). A Keras model object is serialised
to its ``.keras`` bytes once, and one key of the graph holds them: the scheduler gets them
once with the graph and each worker fetches one copy, whatever the number of tasks. No temporary file is involved, so workers on other
machines get the model too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dask
import numpy as np

from ..errors import MissingError, ShapeError, ValueProblem
from . import _cache
from .models import read_spec


class ModelHandle:
    """A picklable reference to a network: ``path`` (a file workers can read) or ``token``
    (a model shipped as bytes, see :func:`model_handle`).

    Examples
    --------
    >>> h = ModelHandle(None, "keras-abc")
    >>> h.kwargs(), str(h)
    ({}, '<keras model keras-abc>')
    """

    def __init__(self, path, token, blob=None):
        self.path, self.token, self.blob = path, token, blob

    def __reduce__(self):  # the bytes travel as a graph dependency, never inside the handle
        return ModelHandle, (self.path, self.token)

    def __str__(self):
        return self.path if self.path is not None else f"<keras model {self.token}>"

    def kwargs(self) -> dict:
        """Keyword arguments of the network tasks: the shipped bytes, as a dependency."""
        return {} if self.blob is None else {"blob": self.blob}

    def load(self, precision="float32", blob=None):
        """The network in this process (loaded or built once per process)."""
        if self.path is not None:
            return _cache.keras_model(self.path, precision)
        if blob is None:
            raise ValueProblem(f"model {self.token} was shipped without its bytes")
        return _cache.shipped_model(self.token, blob, precision)


def model_handle(model, client=None):
    """``(handle, model)`` for a model path or a Keras model object.

    A path must exist; for it, ``model`` is the file's :class:`~tomochunk.nn.models.ModelSpec`
    (its shapes, read without importing Keras), or the model loaded once per process where the
    file is not one the spec reader knows.
    A Keras model is serialised once into one graph key; tasks name it by the token of its
    config and weights. ``client`` is accepted for compatibility and not needed.

    Examples
    --------
    >>> model_handle(3.5)
    Traceback (most recent call last):
    ...
    tomochunk.errors.ValueProblem: model must be a path or a Keras model, got float
    """
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if not p.exists():
            raise MissingError("no such model file", p)
        path = str(p.resolve())
        token = "file-" + dask.base.tokenize(path, os.stat(path).st_mtime_ns)
        return ModelHandle(path, token), read_spec(path) or _cache.keras_model(path)
    if not hasattr(model, "predict_on_batch"):
        raise ValueProblem(f"model must be a path or a Keras model, got {type(model).__name__}")
    blob = _cache.model_bytes(model)
    # from the config and weights: a .keras file holds its save date, so its bytes differ per save
    token = "keras-" + dask.base.tokenize(model.to_json(), [np.asarray(w) for w in model.get_weights()])
    _cache.put_token(token, model)  # this process already has it
    # one key of the graph holds the bytes: the scheduler receives them once with the graph and
    # workers fetch them from each other. Scattered data would tie the graph to one client, so a
    # graph computed later (another client, or dask's local scheduler) would miss it.
    dep = dask.delayed(blob, name="model-bytes-" + token, pure=True)
    return ModelHandle(None, token, dep), model


def n_classes(model, patch_size):
    """Classes the model predicts; checks its input size against ``patch_size`` (None: any size)."""
    shape = tuple(model.output_shape) if hasattr(model, "output_shape") else None
    if not shape or shape[-1] is None:
        raise ValueProblem("cannot tell the number of classes from the model's output shape")
    ins = tuple(model.input_shape)
    fixed = [s for s in ins[1:4] if s is not None]
    if fixed and patch_size is None:
        raise ValueProblem(f"tiling='blocks' needs a network that takes any input size; this one takes {ins[1:4]}")
    if fixed and any(s != patch_size for s in fixed):
        raise ValueProblem(f"the model takes patches of {ins[1:4]}, but patch_size={patch_size}")
    return int(shape[-1])


def model_kind(model):
    """``"movie"`` for the anisotropic ``[t, y, x]`` network (pools ``(1, 2, 2)``), else ``"tomogram"``.

    The pooling layers record it (:func:`tomochunk.nn.models.build_unet`, ``anisotropic=``);
    a model without 3D pooling layers is taken as a tomogram model.

    Examples
    --------
    >>> class Pool:
    ...     pool_size = (1, 2, 2)
    >>> class Net:
    ...     layers = [Pool()]
    >>> model_kind(Net())
    'movie'
    """
    for layer in getattr(model, "layers", []):
        pool = getattr(layer, "pool_size", None)
        if pool is not None and len(tuple(pool)) == 3:
            return "movie" if tuple(pool)[0] == 1 and tuple(pool)[1] > 1 else "tomogram"
    return "tomogram"


def check_model_dims(model, dims, path=None) -> None:
    """Refuse a ``[t, y, x]`` movie given to a 3D tomogram model, and a tomogram given to a movie model.

    Examples
    --------
    >>> class Net:
    ...     layers = []
    >>> check_model_dims(Net(), ("t", "y", "x"), "cell.zarr")
    Traceback (most recent call last):
    ...
    tomochunk.errors.ShapeError: cell.zarr: is a (t, y, x) movie, but the model is a 3D tomogram model (it pools z); segment movies with a movie model (tomochunk tirf train/segment)
    """
    if not dims or len(dims) != 3:
        return
    kind = model_kind(model)
    if dims[0] == "t" and kind == "tomogram":
        raise ShapeError("is a (t, y, x) movie, but the model is a 3D tomogram model (it pools z); "
                         "segment movies with a movie model (tomochunk tirf train/segment)", path)
    if dims[0] == "z" and kind == "movie":
        raise ShapeError("is a (z, y, x) tomogram, but the model is a (t, y, x) movie model "
                         "(it pools y and x only); use a tomogram model", path)


#: one network call at a time per process: TensorFlow's intra-op pool already uses every core,
#: so two concurrent calls (a worker's threads) only contend and double the peak memory, while
#: the other threads still read, normalise, crop and write around the running call
SERIAL = True
_LOCK = threading.RLock()  # re-entrant: an ensemble (nn._ensemble.Averaged) runs its members inside


def serial():
    """The context that keeps this process's network calls one at a time (see ``SERIAL``).

    Examples
    --------
    >>> with serial():
    ...     pass
    """
    return _LOCK if SERIAL else _NOLOCK


def run(model, x):
    """The network on one batch, as float32 numpy (one call at a time per process, see ``SERIAL``).

    Examples
    --------
    >>> import numpy as np
    >>> run(lambda x: x * 2, np.ones((1, 2))).tolist()
    [[2.0, 2.0]]
    """
    with serial():
        try:
            y = model.predict_on_batch(x)
        except AttributeError:  # a bare callable
            y = model(x)
        return np.asarray(y, dtype=np.float32)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NOLOCK = _NoLock()
