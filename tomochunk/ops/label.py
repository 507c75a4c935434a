"""Distributed connected components and per-object statistics.

``label`` labels every block, stitches the labels that touch across block faces
with a small graph solved on the client, and relabels every block with a lookup
table; ``regionprops`` reduces every block to one row per object present and
combines the rows. Both run on the shared engine :mod:`tomochunk.ops._ccl` (see
it for the algorithm); a map that is one block is labelled directly with numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._log import get_logger
from ..errors import ShapeError
from . import _ccl

log = get_logger(__name__)

__all__ = ["label", "regionprops"]


def label(mask, *, structure=None, connectivity: int = 1, persist=None):
    """Label connected components of a lazy mask, distributed over blocks.

    Equal to :func:`scipy.ndimage.label` up to a permutation of the labels;
    labels are consecutive ``1..n``.

    Parameters
    ----------
    mask : dask.array.Array, xarray.DataArray or numpy.ndarray
        Non-zero voxels are foreground.
    structure : array_like, optional
        ``(3,)*ndim`` boolean structuring element, as in scipy.
    connectivity : int
        Used when ``structure`` is None: 1 (faces), 2 (edges) or 3 (corners),
        as in scikit-image.
    persist : bool, optional
        Keep the block-local labels of pass 1 in worker memory (4 bytes per
        voxel) so that computing the result is a table lookup instead of a
        second labelling. Default: only when a distributed client is active and
        they take under a quarter of the workers' memory.

    Returns
    -------
    labels : dask.array.Array
        Lazy int32 (int64 beyond 2³¹ objects) labels with the chunks of ``mask``.
    n : int
        Number of objects.

    Notes
    -----
    The face graph is solved eagerly (it only holds labels that touch block
    faces). Without ``persist`` the returned array labels each block again
    when computed, so nothing the size of the volume stays in memory. A mask
    that is one block (a numpy array up to dask's automatic chunk size, or a
    dask array of one chunk) is labelled at once in this process, and the
    returned array wraps those labels.

    Examples
    --------
    >>> import dask.array as da
    >>> m = da.zeros((64, 64, 64), bool, chunks=32)
    >>> labels, n = label(m > 0)
    >>> n
    0
    """
    m, _ = _ccl.as_input(mask, "mask")
    if m.ndim < 1:
        raise ShapeError("mask must have at least one dimension")
    s = _ccl.structure(m.ndim, structure, connectivity)
    plan = _ccl.plan(m, s, persist=persist)
    return plan.labels(), plan.n


def regionprops(labels, *, intensity=None, classes=None):
    """Per-object statistics of a lazy label map, reduced blockwise.

    Parameters
    ----------
    labels : dask.array.Array, xarray.DataArray or numpy.ndarray
        Integer labels, 0 = background (for example from :func:`label`).
    intensity : array, optional
        Score or intensity map of the same shape: gives ``score_sum``,
        ``score_max`` and ``score_mean`` per object.
    classes : array, optional
        Integer class map of the same shape: ``class_label`` is the class
        most voxels of the object carry (ties: smallest class id).

    Returns
    -------
    pandas.DataFrame
        One row per label: ``[class_label], x, y, z`` (centroid, voxels),
        ``size`` (voxels), ``obj_id`` (the label), then ``score_*`` and the
        bounding box ``bbox_z0, bbox_y0, bbox_x0`` (inclusive) and
        ``bbox_z1, bbox_y1, bbox_x1`` (exclusive).

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((8, 8, 8), int); lab[1:3, 1:3, 1:3] = 1
    >>> regionprops(lab)[["x", "y", "z", "size"]].values.tolist()
    [[1.5, 1.5, 1.5, 8.0]]
    """
    lab, vs = _ccl.as_input(labels, "labels")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ShapeError(f"labels must be an integer array, got {lab.dtype}")
    inten = cls = None
    if intensity is not None:
        inten, vs2 = _ccl.as_input(intensity, "intensity")
        vs = vs or vs2
        if inten.shape != lab.shape:
            raise ShapeError(f"intensity shape {inten.shape} differs from labels shape {lab.shape}")
    if classes is not None:
        cls, _ = _ccl.as_input(classes, "classes")
        if cls.shape != lab.shape:
            raise ShapeError(f"classes shape {cls.shape} differs from labels shape {lab.shape}")
        if not np.issubdtype(cls.dtype, np.integer):
            raise ShapeError(f"classes must be an integer array, got {cls.dtype}")
    if not _ccl.one_block(lab, inten, cls):
        lab, inten, cls = _ccl.as_blocked(lab, inten, cls)
    parts = _ccl.block_parts(lab, inten, cls)
    obj, cl = _ccl.combine_stats(parts, lab.ndim, inten is not None, cls is not None)
    if cls is not None and cl is None:
        cl = pd.Series(dtype=np.int64)
    return _ccl.stats_frame(obj, cl, lab.ndim, vs, inten is not None)
