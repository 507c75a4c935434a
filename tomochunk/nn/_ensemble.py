"""Test-time augmentation and ensembles inside one network task (the volume is read once).

:func:`ensemble_handle` wraps the handles of one or more models in a :class:`EnsembleHandle`
whose ``load`` returns an :class:`Averaged` network: every batch the tiling hands it goes
through each model and, with TTA, each flip of z, y and x; the outputs are flipped back and
averaged. Windows and patches have sides that are multiples of 4, so a flipped window pools
in the same phase as the original and blockwise TTA equals TTA of the whole volume.
"""

from __future__ import annotations

from itertools import combinations

import dask
import numpy as np

from ..errors import ValueProblem
from ._model import model_handle, run
from ._split import split_of

__all__ = ["ensemble_handle", "Averaged", "EnsembleHandle", "flip_sets"]


def flip_sets(tta):
    """Axis sets (of a ``[B, z, y, x, c]`` batch) averaged for ``tta``.

    Examples
    --------
    >>> flip_sets(False), len(flip_sets(True)), flip_sets("xy")
    ([()], 8, [(), (2,), (3,), (2, 3)])
    """
    if tta in (False, None, "none"):
        return [()]
    axes = {True: (1, 2, 3), "all": (1, 2, 3), "xy": (2, 3)}.get(tta)
    if axes is None:
        raise ValueProblem(f"tta must be True, False, 'all' or 'xy', not {tta!r}")
    return [c for k in range(len(axes) + 1) for c in combinations(axes, k)]


class Averaged:
    """Networks averaged over models and flips; it quacks like a model (``predict_on_batch``).

    Examples
    --------
    >>> import numpy as np
    >>> net = Averaged([lambda x: x[..., :1] * 0 + x.mean()], flip_sets(True))
    >>> float(net.predict_on_batch(np.ones((1, 4, 4, 4, 1)))[0, 0, 0, 0, 0])
    1.0
    """

    def __init__(self, models, flips):
        self.models, self.flips = list(models), list(flips)

    def predict_on_batch(self, x):
        x = np.asarray(x, dtype=np.float32)
        acc = None
        for m in self.models:
            for axes in self.flips:
                y = run(m, np.ascontiguousarray(np.flip(x, axes)) if axes else x)
                y = np.flip(y, axes) if axes else y
                acc = y.copy() if acc is None else acc + y
        return acc / np.float32(len(self.models) * len(self.flips))

    def split(self):
        """Itself where every member is a DeepFinder U-Net that runs in slabs (its
        :meth:`predict_core` then averages their slab-wise cores), else None."""
        return self if all(split_of(m) is not None for m in self.models) else None

    def predict_core(self, x, core, slab_voxels):
        """The averaged class-first core of the ``[z, y, x]`` window ``x``, each member and flip
        through :meth:`tomochunk.nn._split.SplitUNet.predict_core`."""
        acc = None
        for m in self.models:
            for axes in self.flips:
                # batch axis b is window axis b - 1 and axis b of the class-first core
                xf = np.ascontiguousarray(np.flip(x, [b - 1 for b in axes])) if axes else x
                cf = tuple(slice(n - s.stop, n - s.start) if a + 1 in axes else s
                           for a, (s, n) in enumerate(zip(core, x.shape)))
                y = split_of(m).predict_core(xf, cf, slab_voxels)
                y = np.flip(y, axes) if axes else y
                acc = y.copy() if acc is None else acc + y
        return acc / np.float32(len(self.models) * len(self.flips))


class EnsembleHandle:
    """A picklable handle of several model handles and the TTA flips (see :func:`ensemble_handle`)."""

    def __init__(self, handles, flips, blob=None):
        self.handles, self.flips, self.blob = list(handles), list(flips), blob
        self.token = "ens-" + dask.base.tokenize([h.token for h in self.handles], self.flips)
        self.path = None

    def __reduce__(self):
        return EnsembleHandle, (self.handles, self.flips)

    def __str__(self):
        names = " + ".join(str(h) for h in self.handles)
        return names + (f" (TTA x{len(self.flips)})" if len(self.flips) > 1 else "")

    def kwargs(self) -> dict:
        return {} if self.blob is None else {"blob": self.blob}

    def load(self, precision="float32", blob=None):
        blobs = blob if blob is not None else [None] * len(self.handles)
        return Averaged([h.load(precision, b) for h, b in zip(self.handles, blobs)], self.flips)


def ensemble_handle(model, client=None, tta=False):
    """``(handle, model)`` for one model (unchanged when no TTA) or a list of models.

    The returned model is the first one's spec or Keras model (shapes and memory estimates);
    every model must predict the same number of classes.
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise ValueProblem("model: give at least one model")
    flips = flip_sets(tta)
    pairs = [model_handle(m, client) for m in models]
    if len(pairs) == 1 and len(flips) == 1:
        return pairs[0]
    outs = {tuple(k.output_shape)[-1] for _, k in pairs}
    if len(outs) != 1:
        raise ValueProblem(f"the ensemble's models predict different numbers of classes: {sorted(outs)}")
    handles = [h for h, _ in pairs]
    blob = None
    if any(h.blob is not None for h in handles):
        blob = dask.delayed(list)([h.blob for h in handles])
    return EnsembleHandle(handles, flips, blob), pairs[0][1]
