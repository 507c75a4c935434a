"""A movie's segmentation -> an event list (ExoDeepFinder's post-processing)."""

from __future__ import annotations

from ..._log import get_logger
from ...errors import FormatError
from ...ops.cluster import cluster
from ._common import EVENT, _movie_array

log = get_logger(__name__)


def events_from_segmentation(labelmap, *, keep=(EVENT,), relabel=True, radius=5, method="meanshift", min_size=1,
                             connectivity=1):
    """Events from a segmentation, via :func:`tomochunk.ops.cluster.cluster`.

    Parameters
    ----------
    labelmap : path or array
        ``[t, y, x]`` integer map (0 background, 1 bright spot, 2 exocytosis).
    keep : tuple of int or None
        Classes kept as events (default: exocytosis, 2; bright spots are dropped). ``None``
        keeps every class with its label unchanged (ExoDeepFinder's ``--keep_labels_unchanged``).
    relabel : bool
        Give kept events class 1, the class of expert annotations, so the list can be used
        as an annotation file (ExoDeepFinder's default). Ignored when ``keep`` is None.
    radius : float
        Mean-shift bandwidth in pixels (ExoDeepFinder's ``cluster_radius``, 5 for 400 nm
        events at 160 nm pixels).
    method : {"meanshift", "cc"}
        DeepFinder's mean shift (splits touching events), or one event per connected component.
    min_size : int
        Drop events with fewer voxels.

    Returns
    -------
    DataFrame
        ``class_label, x, y, z`` (z = frame), ``size``, ``obj_id``.

    Examples
    --------
    >>> events = events_from_segmentation("movie_segmentation.zarr")  # doctest: +SKIP
    """
    data, path = _movie_array(labelmap)
    if data.dtype.kind not in "iub":
        raise FormatError(f"a label map must hold integers, got {data.dtype}", path)
    classes = None if keep is None else [int(k) for k in keep]
    df = cluster(data, radius=radius, classes=classes, min_size=min_size, method=method,
                 connectivity=connectivity).copy()
    if keep is not None and relabel:
        df["class_label"] = 1
    df = df.reset_index(drop=True)
    df.attrs["voxel_size"] = 1.0
    log.info("%d events from %s", len(df), path or "label map")
    return df
