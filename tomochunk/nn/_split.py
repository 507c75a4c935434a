"""One ``tiling="blocks"`` window through the U-Net, its full-resolution levels in z slabs.

A whole network call holds, at full resolution, the first level's two convolutions and, in the
decoder, the up-sampled features, the skip, their concatenation and two convolutions at once
(0.8-1 KB per voxel in float32). Only the skip (``conv3d_1``, f0 channels) has to exist for the
whole window at full resolution. So the window runs in three parts:

- the *head*, input to ``conv3d_1`` and its max-pooling, on slabs of z planes;
- the *middle*, the pooled levels (``conv3d_2`` to ``conv3d_10``), on the whole window at
  1/8 (1/4 for a movie network) of its voxels;
- the *tail*, ``conv3d_11`` (UpConv3D) to the softmax, on slabs of z planes.

Slabs overlap by the few planes their convolutions read across a slab side (two 3x3x3
convolutions: 2 planes each way; UpConv3D reads the next half-resolution plane), so each slab's
kept planes are exactly those of the whole call. A window then needs per voxel its input, the
skip and the cropped output (about 0.3 KB in float32), plus a fixed budget for one slab: larger
blocks fit a worker, with fewer halo voxels (the tiling overhead). Tail slabs that fall entirely
in the halo are not run; the slabs of a window have one shape, so each part traces once per
window shape.
"""

from __future__ import annotations

import weakref

import numpy as np

from ._model import serial

SKIP, POOLED, DEEP, UP, CAT = "conv3d_1", "max_pooling3d", "conv3d_10", "conv3d_11", "concatenate_1"
MIDDLE = ("conv3d_2", "conv3d_3", "max_pooling3d_1", "conv3d_4", "conv3d_5", "conv3d_6", "conv3d_7",
          "conv3d_8", "concatenate", "conv3d_9")
TAIL = ("conv3d_12", "conv3d_13", "conv3d_14")
#: full-resolution voxels of one slab (about 1 KB each in float32, 0.5 KB in bfloat16)
SLAB_VOXELS = 1 << 21
#: planes a tail slab's kept part stays away from an inner slab side: the 3x3x3 pair reads one
#: plane each, and UpConv3D's last output plane reads the next half-resolution plane
FRONT, BACK = 2, 3
#: planes the head's two 3x3x3 convolutions read across a slab side
HEAD_HALO = 2

_SPLITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def splittable(model) -> bool:
    """Whether ``model`` (a Keras model or a :class:`~tomochunk.nn.models.ModelSpec`) is the
    DeepFinder U-Net of :func:`~tomochunk.nn.models.deepfinder_unet`, whose tail can run in slabs.

    Examples
    --------
    >>> from types import SimpleNamespace as N
    >>> splittable(N(layers=[N(name=n) for n in (SKIP, POOLED, DEEP, UP, CAT) + MIDDLE + TAIL]))
    True
    >>> splittable(N(layers=[N(name="dense")]))
    False
    """
    names = {getattr(layer, "name", None) for layer in getattr(model, "layers", None) or ()}
    return {SKIP, POOLED, DEEP, UP, CAT, *MIDDLE, *TAIL} <= names


def slab_plan(zd, ld, u):
    """Tail slabs over ``zd`` half-resolution planes (``u``: the z up-sampling factor, 1 or 2),
    each ``ld`` planes long: ``(i0, i1, lo, hi)``, the slab's half-resolution planes and the
    full-resolution planes ``[lo, hi)`` kept from it. The kept ranges tile ``[0, u * zd)``.

    Examples
    --------
    >>> slab_plan(10, 10, 2)
    [(0, 10, 0, 20)]
    >>> slab_plan(10, 4, 2)
    [(0, 4, 0, 5), (1, 5, 5, 7), (2, 6, 7, 9), (3, 7, 9, 11), (4, 8, 11, 13), (5, 9, 13, 15), (6, 10, 15, 20)]
    >>> slab_plan(12, 8, 1)
    [(0, 8, 0, 5), (3, 11, 5, 8), (4, 12, 8, 12)]
    """
    if ld >= zd:
        return [(0, zd, 0, u * zd)]
    step = ld - -(-(FRONT + BACK) // u)
    starts = list(range(0, zd - ld, step)) + [zd - ld]
    out, prev = [], 0
    for i0 in starts:
        i1 = i0 + ld
        hi = u * i1 if i1 == zd else u * i1 - BACK
        out.append((i0, i1, prev, hi))
        prev = hi
    return out


def head_plan(z, step, u):
    """Head slabs over ``z`` planes in steps of ``step`` (a multiple of ``u``, the z pooling):
    ``(s, e, lo, hi)``, the input planes ``[s, e)`` (all of one length) and the kept skip planes
    ``[lo, hi)``.

    Examples
    --------
    >>> head_plan(16, 8, 2)
    [(0, 12, 0, 8), (4, 16, 8, 16)]
    >>> head_plan(16, 16, 2)
    [(0, 16, 0, 16)]
    """
    n = step + 2 * HEAD_HALO
    if n >= z:
        return [(0, z, 0, z)]
    out = []
    for lo in range(0, z, step):
        s = min(max(0, lo - HEAD_HALO), z - n)
        out.append((s, s + n, lo, min(z, lo + step)))
    return out


def _head_step(z, thick, u):
    """Kept planes per head slab: the fewest slabs of at most ``thick`` input planes, balanced.

    Examples
    --------
    >>> _head_step(200, 46, 2), _head_step(200, 400, 2), _head_step(200, 1, 2)
    (40, 200, 2)
    """
    most = max(u, (thick - 2 * HEAD_HALO) // u * u)
    n = -(-z // most)
    return -(-(-(-z // n)) // u) * u


def _tail_length(zd, thick, u):
    """Half-resolution planes per tail slab: the fewest slabs of at most ``thick`` full-resolution
    planes (at least the overlap plus one), balanced.

    Examples
    --------
    >>> _tail_length(100, 46, 2), _tail_length(100, 400, 2), _tail_length(100, 1, 2)
    (23, 100, 4)
    """
    overlap = -(-(FRONT + BACK) // u)
    most = max(overlap + 1, thick // u)
    if most >= zd:
        return zd
    n = -(-(zd - overlap) // (most - overlap))
    return -(-(zd + (n - 1) * overlap) // n)


class SplitUNet:
    """A DeepFinder U-Net as its head, middle and tail parts (same layers, same weights).

    Examples
    --------
    >>> from tomochunk.nn.models import deepfinder_unet
    >>> net = deepfinder_unet(3, filters="small")
    >>> x = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    >>> whole = np.asarray(net.predict_on_batch(x[None, ..., None]))[0]
    >>> core = (slice(2, 14), slice(0, 12), slice(1, 7))
    >>> part = SplitUNet(net).predict_core(x, core, slab_voxels=4 * 12 * 8)
    >>> bool(np.abs(part - np.moveaxis(whole[core], -1, 0)).max() < 1e-5)
    True
    """

    def __init__(self, model):
        import keras

        get = model.get_layer
        up = get(UP)
        self.u = int(up.up[0])
        dtype = up.compute_dtype
        self.head = keras.Model(model.inputs, [get(SKIP).output, get(POOLED).output], name="head")
        pooled = keras.Input((None, None, None, int(get(SKIP).filters)), dtype=dtype, name="pooled")
        x = get("conv3d_2")(pooled)
        mid = get("conv3d_3")(x)
        x = get("max_pooling3d_1")(mid)
        for name in ("conv3d_4", "conv3d_5", "conv3d_6", "conv3d_7", "conv3d_8"):
            x = get(name)(x)
        x = get("concatenate")([x, mid])
        for name in ("conv3d_9", DEEP):
            x = get(name)(x)
        self.middle = keras.Model(pooled, x, name="middle")
        deep = keras.Input((None, None, None, int(get(DEEP).filters)), dtype=dtype, name="deep")
        skip = keras.Input((None, None, None, int(get(SKIP).filters)), dtype=dtype, name="skip")
        x = get(CAT)([up(deep), skip])
        for name in TAIL:
            x = get(name)(x)
        self.tail = keras.Model([deep, skip], x, name="tail")
        self.n_classes = int(model.output_shape[-1])

    def predict_core(self, x, core, slab_voxels=SLAB_VOXELS):
        """Class-first float32 scores ``[c, ...]`` of ``core`` (3 slices of ``x``) from the window
        ``x`` (``[z, y, x]``, sides multiples of the pooling), as one whole network call gives."""
        z0, z1 = core[0].start, core[0].stop
        out = np.empty((self.n_classes, z1 - z0) + tuple(len(range(*s.indices(n))) for s, n in
                                                     zip(core[1:], x.shape[1:])), np.float32)
        u, plane = self.u, x.shape[1] * x.shape[2]
        zd = x.shape[0] // u
        thick = max(1, slab_voxels // plane)  # full-resolution planes per slab
        with serial():  # the whole window is one network call for the worker's other threads
            skip, pooled = None, None
            for s, e, lo, hi in head_plan(x.shape[0], _head_step(x.shape[0], thick, u), u):
                a, b = self.head.predict_on_batch(x[None, s:e, ..., None])
                if skip is None:
                    skip = np.empty((1,) + x.shape + a.shape[-1:], a.dtype)
                    pooled = np.empty((1, zd) + b.shape[2:], b.dtype)
                skip[:, lo:hi] = a[:, lo - s:hi - s]
                pooled[:, lo // u:hi // u] = b[:, (lo - s) // u:(hi - s) // u]
            deep = np.asarray(self.middle.predict_on_batch(pooled))
            del pooled
            for i0, i1, lo, hi in slab_plan(zd, _tail_length(zd, thick, u), u):
                a, b = max(lo, z0), min(hi, z1)
                if a >= b:
                    continue  # kept planes all in the halo
                y = self.tail.predict_on_batch([deep[:, i0:i1], skip[:, u * i0:u * i1]])
                y = np.asarray(y[0, a - u * i0:b - u * i0, core[1], core[2]], dtype=np.float32)
                for z in range(b - a):
                    out[:, a - z0 + z] = np.moveaxis(y[z], -1, 0)
        return out


def split_of(model):
    """The :class:`SplitUNet` of a loaded Keras ``model``, built once per model object (an
    ensemble whose members all split: the ensemble); None where the model is another network.

    Examples
    --------
    >>> split_of(lambda x: x) is None
    True
    """
    if hasattr(model, "split"):  # an ensemble (nn._ensemble.Averaged): its members split
        return model.split()
    if not splittable(model):
        return None
    try:
        split = _SPLITS.get(model)
    except TypeError:
        return None
    if split is None:
        split = _SPLITS[model] = SplitUNet(model)
    return split
