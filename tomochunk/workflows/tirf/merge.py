"""Merge detector spots (class 1) with expert events (class 2) into training annotations."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..._log import get_logger
from ...errors import ShapeError, ValueProblem
from ...io.objects import write_objects
from ...io.volume import write_volume
from ._common import EVENT, EVENT_RADII, SPOT, _as_tyx, _movie_array, _movie_chunks, _points, _shape_of
from .annotate import check_events, paint_objects
from .detect import import_spots, spots_from_labelmap

log = get_logger(__name__)


def match_events(spots, events, *, match_radius=5.0, match_frames=None):
    """Which spots match an expert event.

    Parameters
    ----------
    match_radius : float
        Pixels.
    match_frames : int, optional
        ``None`` (default, ExoDeepFinder's rule): a spot matches when its Euclidean distance
        to an event in ``(x, y, frame)`` is at most ``match_radius``, time counting as a pixel
        axis, so a spot 3 px away matches up to 4 frames apart. An integer: within
        ``match_radius`` px in the frame plane *and* at most ``match_frames`` frames apart.

    Returns
    -------
    numpy.ndarray of bool
        One per spot.
    """
    if match_radius < 0:
        raise ValueProblem(f"match_radius must be >= 0, got {match_radius}")
    if len(spots) == 0 or len(events) == 0:
        return np.zeros(len(spots), bool)
    s = spots[["x", "y", "z"]].to_numpy(float)
    e = events[["x", "y", "z"]].to_numpy(float)
    if match_frames is None:
        hits = cKDTree(e).query_ball_point(s, r=match_radius)
        return np.array([len(h) > 0 for h in hits], bool)
    hits = cKDTree(e[:, :2]).query_ball_point(s[:, :2], r=match_radius)
    return np.array([bool(h) and bool(np.any(np.abs(e[h, 2] - s[i, 2]) <= match_frames))
                     for i, h in enumerate(hits)], bool)


def merge_annotations(spots, events, shape, *, match_radius=5.0, match_frames=None, max_spots=9800, seed=0,
                      radii=EVENT_RADII, spot_radius=2, check_label=1, labels_path=None, objects_path=None,
                      overwrite=False, chunks=None):
    """Merge detector spots (class 1) with expert events (class 2) into training annotations.

    The ExoDeepFinder rule: detector spots within ``match_radius`` px of an expert event
    (see :func:`match_events` for the time rule) are that event seen by the detector and are
    removed; the remaining spots become class 1 and the expert events class 2.

    - The label map holds every remaining spot (a disk of ``spot_radius`` on its frame, or
      its own pixels when ``spots`` is a detector label map) and every event's cone
      (:data:`EVENT_RADII`) painted over them. All spots stay in the map so that the network
      never learns a bright spot as background.
    - The object list (used to sample training patches) holds the events and at most
      ``max_spots`` spots (default 9800, ExoDeepFinder's cap; None keeps all), sampled
      without replacement with ``seed``.

    Parameters
    ----------
    spots : DataFrame, path or array
        Detector output: an object list (:func:`detect_spots`, :func:`import_spots`) or a
        detector label map (path or array, nonzero = spot).
    events : DataFrame or path
        Expert annotations, class 1 (ExoDeepFinder convention).
    shape : tuple or array
        ``(t, y, x)`` of the movie (or the movie).
    labels_path, objects_path : path, optional
        Also write the label map (``.zarr``/``.h5``/...) and the object list (``.xml``/``.csv``/...).

    Returns
    -------
    (xarray.DataArray, DataFrame)
        The lazy uint8 label map and the merged object list (events first, then spots; the
        column ``obj_id`` numbers them).

    Examples
    --------
    >>> labels, objs = merge_annotations(spots, "expert_annotation.xml", movie.shape, max_spots=9800,
    ...                                  labels_path="merged_segmentation.zarr",
    ...                                  objects_path="merged_annotation.xml")  # doctest: +SKIP
    """
    shape = _shape_of(shape)
    ev = check_events(events, shape, label=check_label).copy()
    ev["class_label"] = EVENT
    spot_map = None
    if isinstance(spots, pd.DataFrame):
        sp = spots.copy()
    else:
        p = Path(spots) if isinstance(spots, (str, Path)) else None
        if p is not None and p.suffix.lower() in (".xml", ".csv", ".star", ".tsv", ".json", ".txt", ".xlsx"):
            sp = import_spots(p)
        else:
            spot_map, _ = _movie_array(spots)
            if tuple(spot_map.shape) != shape:
                raise ShapeError(f"detector map is {tuple(spot_map.shape)}, the movie is {shape}", p)
            sp = spots_from_labelmap(spot_map)
    keep = ~match_events(sp, ev, match_radius=match_radius, match_frames=match_frames)
    log.info("merge: %d of %d detector spots match one of %d expert events and are removed",
             int((~keep).sum()), len(sp), len(ev))
    removed, sp = sp[~keep], sp[keep].reset_index(drop=True)
    sp["class_label"] = SPOT
    listed = sp
    if max_spots is not None and len(sp) > max_spots:
        rng = np.random.default_rng(seed)
        listed = sp.iloc[np.sort(rng.choice(len(sp), size=int(max_spots), replace=False))]
    cols = ["class_label", "x", "y", "z"]
    objs = pd.concat([ev[cols], listed[cols]], ignore_index=True)
    objs["obj_id"] = np.arange(len(objs))
    objs.attrs["voxel_size"] = 1.0
    objs.attrs["classes"] = {SPOT: "spot", EVENT: "exocytosis"}
    if spot_map is None:
        labels = paint_objects([(sp, SPOT, (spot_radius,)), (ev, EVENT, radii)], shape, chunks=chunks)
    else:
        chunks = _movie_chunks(shape, chunks)
        # whole frames per block: a per-frame component may span storage chunks in y, x
        spot_map = spot_map.rechunk((chunks[0], shape[1], shape[2]))
        # drop the removed spots' pixels: per-frame components whose centroid matched an event
        rm = _points(removed, SPOT)[0]
        base = da.map_blocks(_erase_components, spot_map, rm, dtype=np.uint8).rechunk(chunks)
        events_map = paint_objects([(ev, EVENT, radii)], shape, chunks=chunks).data
        labels = _as_tyx(da.maximum(base, events_map))
    if labels_path is not None:
        write_volume(labels, labels_path, overwrite=overwrite, levels=1)
    if objects_path is not None:
        write_objects(objs, objects_path)
    return labels, objs


def _erase_components(block, removed, block_info=None):
    """Class-1 map of a detector block, without the per-frame components listed in ``removed``."""
    (t0, t1), (y0, y1), (x0, x1) = block_info[0]["array-location"]  # whole frames: y0 = x0 = 0
    out = (np.asarray(block) > 0).astype(np.uint8)
    sel = (removed[:, 0] >= t0) & (removed[:, 0] < t1) if len(removed) else np.zeros(0, bool)
    for t, y, x in removed[sel]:
        lab, _ = ndi.label(out[t - t0], structure=np.ones((3, 3), bool))
        yy, xx = int(np.clip(y - y0, 0, y1 - y0 - 1)), int(np.clip(x - x0, 0, x1 - x0 - 1))
        v = lab[yy, xx]
        if v == 0:  # a ring-shaped component's centroid can fall outside it: take the nearest pixel
            d = ndi.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
            v = lab[d[0][yy, xx], d[1][yy, xx]]
        out[t - t0][lab == v] = 0
    return out
