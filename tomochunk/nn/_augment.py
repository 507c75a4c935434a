"""Patch augmentations that keep a tomogram's missing wedge where it belongs (numpy, sampler side).

The missing wedge of a single-axis tilt series around y is the region ``|k_z| > tan(a) |k_x|``
of Fourier space. Flipping any axis maps it onto itself, so flips of z, y and x are safe.
A 90° rotation about z swaps y and x, and with them the tilt axis; the CZII winners used it
anyway (the network sees both wedge orientations and learns to ignore them), so it is
offered, about z only: rotations that tilt z would put the wedge where no real tomogram has
it. Intensity jitter scales and shifts the normalised patch.

Used by :class:`tomochunk.nn.train.PatchSampler` for ``augment="wedge"``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["wedge_augment", "lr_at"]


def wedge_augment(x, y, rng, *, flips=True, rot90=True, scale=0.1, shift=0.1):
    """Flips of z, y, x, a 90° rotation about z and intensity jitter of one patch.

    Parameters
    ----------
    x : ndarray ``[z, y, x]``
        Normalised data patch (mean 0, std 1).
    y : ndarray ``[z, y, x]``
        Label patch (moved with ``x``, never jittered).
    rng : numpy.random.Generator
    flips : bool
        Flip each of z, y, x with probability 1/2.
    rot90 : bool
        Rotate by k·90° about z (k uniform in 0..3) when y and x have the same size.
    scale, shift : float
        Intensity ``x * (1 + u * scale) + v * shift`` with ``u, v`` uniform in ``[-1, 1]``.

    Returns
    -------
    x, y : ndarray
        The augmented patches (``x`` float32, contiguous).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.arange(64, dtype="float32").reshape(4, 4, 4)
    >>> xa, ya = wedge_augment(x, x.astype(int), rng, scale=0, shift=0)
    >>> bool(np.array_equal(xa, ya)), sorted(xa.ravel().tolist()) == sorted(x.ravel().tolist())
    (True, True)
    """
    if flips:
        axes = tuple(a for a in range(3) if rng.random() < 0.5)
        if axes:
            x, y = np.flip(x, axes), np.flip(y, axes)
    if rot90 and x.shape[1] == x.shape[2]:
        k = int(rng.integers(4))
        if k:
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if scale or shift:
        x = x * np.float32(1 + rng.uniform(-1, 1) * scale) + np.float32(rng.uniform(-1, 1) * shift)
    return x, np.ascontiguousarray(y)


def lr_at(progress, lr, *, warmup=0.05, schedule="cosine", floor=0.01):
    """Learning rate at ``progress`` (0..1 of the run): linear warm-up, then cosine decay.

    ``schedule="constant"`` keeps ``lr`` (DeepFinder). The cosine ends at ``floor * lr``.

    Examples
    --------
    >>> [round(lr_at(p, 1.0), 3) for p in (0.0, 0.05, 0.5, 1.0)]
    [0.0, 1.0, 0.546, 0.01]
    >>> lr_at(0.3, 1e-4, schedule="constant")
    0.0001
    """
    if schedule == "constant":
        return lr
    p = min(max(float(progress), 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return lr * p / warmup
    q = (p - warmup) / max(1.0 - warmup, 1e-12)
    return float(lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * q))))
