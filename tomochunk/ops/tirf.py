"""TIRF exocytosis workflow: ExoDeepFinder's steps on lazy ``[t, y, x]`` movies.

The steps, in ExoDeepFinder's order (each a plain function, each a ``tomochunk tirf``
subcommand):

1. :func:`convert_movies` - every TIFF-frame folder under a parent -> OME-Zarr movies.
2. :func:`detect_spots` - a bright-spot detector (Laplacian of Gaussian + local maxima)
   that stands in for Atlas; :func:`import_spots` reads any external detector's output.
3. :func:`event_targets` - expert event annotations -> a lazy label map (a cone per event).
4. :func:`merge_annotations` - detector spots (class 1) + expert events (class 2).
5. :func:`make_dataset` - a seeded train/valid split written as a manifest.
6. :func:`train_events` / :func:`segment_movies` - the anisotropic network.
7. :func:`events_from_segmentation` - a segmentation -> an event list.

Coordinates follow the conventions: object lists hold ``x, y`` in pixels and ``z`` = the
frame index; arrays are ``[t, y, x]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._log import get_logger
from ..errors import FormatError, MissingError, ShapeError, ValueProblem

log = get_logger(__name__)

#: Disk radius per frame of an exocytosis event's cone, from the annotated frame on.
#: A disk of radius r holds the pixels with ``dy² + dx² <= r²`` (r = 4: 49 px, r = 2: 13 px);
#: radius 0 is the single centre pixel. This is ExoDeepFinder's mask: a disk of radius 4 on the
#: annotated frame, radius 2 on the next one, then one pixel.
EVENT_RADII = (4, 2, 0)

#: Class labels of the merged training targets.
SPOT, EVENT = 1, 2


# --- helpers ---------------------------------------------------------------------------------

def _movie_array(movie):
    """(dask array, DataArray-or-None, source path or None) for a path, numpy, dask or xarray movie."""
    import dask.array as da
    import xarray as xr

    path = None
    if isinstance(movie, (str, Path)):
        from ..io.volume import open_volume

        path = Path(movie)
        movie = open_volume(movie)
    if isinstance(movie, xr.DataArray):
        data = movie.data
        path = path or movie.attrs.get("source")
    else:
        data = movie
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        data = da.from_array(data, chunks=(min(64, data.shape[0]),) + data.shape[1:] if data.ndim == 3 else -1)
    if data.ndim != 3:
        raise ShapeError(f"a movie must be [t, y, x], got {data.ndim}D", path)
    return data, path


def _as_tyx(data, name="labels"):
    import xarray as xr

    return xr.DataArray(data, dims=("t", "y", "x"), name=name, attrs={"voxel_size": 1.0})


def _movie_chunks(shape, chunks=None):
    if chunks is not None:
        return chunks
    return (min(64, shape[0]), min(512, shape[1]), min(512, shape[2]))


def _objects(objects, what="objects"):
    """A DataFrame from a DataFrame or an object-list file, plus the file (or None)."""
    import pandas as pd

    if isinstance(objects, pd.DataFrame):
        return objects, None
    from ..io.objects import read_objects

    path = Path(objects)
    if not path.exists():
        raise MissingError(f"no such {what} file", path)
    return read_objects(path), path


def _empty_objects():
    import pandas as pd

    df = pd.DataFrame({"class_label": pd.Series([], dtype=int), "x": pd.Series([], dtype=float),
                       "y": pd.Series([], dtype=float), "z": pd.Series([], dtype=float)})
    df.attrs["voxel_size"] = 1.0
    return df


def check_events(events, shape=None, *, label=1, path=None):
    """Check expert event annotations: the class label and that every event lies in the movie.

    Parameters
    ----------
    events : DataFrame or path
        Columns ``class_label, x, y, z`` (z = frame).
    shape : tuple, optional
        ``(t, y, x)`` of the movie; events outside it are refused.
    label : int or None
        The class every annotation must carry. ExoDeepFinder's expert annotations
        (napari-exodeepfinder XML or CSV) mark events with class 1. ``None`` skips the check.

    Raises
    ------
    FormatError
        An annotation with another class label, or an event outside the movie (the message
        names the file and the first offending row).

    Examples
    --------
    >>> check_events("expert_annotation.xml", (1000, 300, 400))  # doctest: +SKIP
    """
    df, p = _objects(events, "annotation")
    p = path or p or "<events>"
    if len(df) == 0:
        return df
    missing = [c for c in ("x", "y", "z") if c not in df.columns]
    if missing:
        raise FormatError(f"annotation has no {', '.join(missing)} column", p)
    if label is not None and "class_label" in df.columns:
        bad = np.flatnonzero(df["class_label"].to_numpy() != label)
        if bad.size:
            i = int(bad[0])
            raise FormatError(
                f"annotation row {i} has class label {df['class_label'].iloc[i]}; expert event annotations "
                f"must use class {label} (ExoDeepFinder convention; {bad.size} such rows)", p)
    if shape is not None:
        t, y, x = (np.rint(df[c].to_numpy(float)).astype(np.int64) for c in ("z", "y", "x"))
        out = (t < 0) | (t >= shape[0]) | (y < 0) | (y >= shape[1]) | (x < 0) | (x >= shape[2])
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise FormatError(
                f"event {i} at x={df['x'].iloc[i]:g} y={df['y'].iloc[i]:g} frame={df['z'].iloc[i]:g} lies "
                f"outside the movie (t, y, x) = {tuple(shape)} ({int(out.sum())} events outside)", p)
    return df


# --- painting objects into a lazy label map -----------------------------------------------

def _footprints(radii):
    """Per frame offset: (dy, dx) offsets of a disk of radius r (r = 0: the centre pixel)."""
    out = []
    for r in radii:
        r = float(r)
        n = int(np.floor(r))
        yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
        keep = yy ** 2 + xx ** 2 <= r * r
        out.append((yy[keep], xx[keep]))
    return out


def _paint_block(block, items, block_info=None):
    """Paint every item touching this block: items are (points [n, 3] int t,y,x; labels [n]; radii)."""
    info = block_info[None]
    (t0, t1), (y0, y1), (x0, x1) = info["array-location"]
    out = np.zeros((t1 - t0, y1 - y0, x1 - x0), dtype=info["dtype"])
    for pts, labels, radii in items:
        if len(pts) == 0:
            continue
        reach = int(np.floor(max(radii)))
        t, y, x = pts[:, 0], pts[:, 1], pts[:, 2]
        near = ((t + len(radii) > t0) & (t < t1) & (y + reach >= y0) & (y - reach < y1)
                & (x + reach >= x0) & (x - reach < x1))
        for k, (dy, dx) in enumerate(_footprints(radii)):
            sel = near & (t + k >= t0) & (t + k < t1)
            if not sel.any():
                continue
            tt = np.repeat(t[sel] + k, dy.size)
            yy = (y[sel][:, None] + dy[None, :]).ravel()
            xx = (x[sel][:, None] + dx[None, :]).ravel()
            ll = np.repeat(labels[sel], dy.size)
            ok = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
            # np.maximum.at: where shapes overlap the higher class wins (events over spots)
            np.maximum.at(out, (tt[ok] - t0, yy[ok] - y0, xx[ok] - x0), ll[ok].astype(out.dtype))
    return out


def _points(df, label):
    if len(df) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.uint8)
    pts = np.stack([np.rint(df[c].to_numpy(float)) for c in ("z", "y", "x")], axis=1).astype(np.int64)
    if label is None:
        labels = df["class_label"].to_numpy().astype(np.uint8) if "class_label" in df else np.ones(len(df), np.uint8)
    else:
        labels = np.full(len(df), label, np.uint8)
    return pts, labels


def paint_objects(layers, shape, *, chunks=None, dtype=np.uint8):
    """Lazily paint object lists into a ``[t, y, x]`` label map, chunk by chunk.

    Parameters
    ----------
    layers : list of (DataFrame, label, radii)
        Each object becomes a stack of disks, ``radii[k]`` on frame ``z + k`` (see
        :data:`EVENT_RADII`); ``label=None`` uses each row's ``class_label``. Where shapes
        overlap the higher label wins.
    shape : tuple
        ``(t, y, x)``.
    chunks : tuple, optional
        Dask chunks (default up to 64 frames x 512 x 512).

    Returns
    -------
    xarray.DataArray
        Lazy uint8 label map, dims ``(t, y, x)``. Each block places only the objects that
        touch it, so memory stays at one block whatever the movie length.

    Examples
    --------
    >>> m = paint_objects([(spots, 1, (2,)), (events, 2, EVENT_RADII)], (1000, 300, 400))  # doctest: +SKIP
    """
    import dask.array as da

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ShapeError(f"a movie shape is (t, y, x), got {shape}")
    items = []
    for df, label, radii in layers:
        radii = tuple(radii)
        if not radii or min(radii) < 0:
            raise ValueProblem(f"radii must be one or more values >= 0, got {radii}")
        pts, labels = _points(df, label)
        items.append((pts, labels, radii))
    chunks = _movie_chunks(shape, chunks)
    template = da.empty(shape, chunks=chunks, dtype=dtype)
    data = template.map_blocks(_paint_block, items, dtype=dtype,
                               meta=np.empty((0, 0, 0), dtype))
    return _as_tyx(data)


def event_targets(events, shape, *, radii=EVENT_RADII, label=None, chunks=None, check_label=1):
    """Lazy ``[t, y, x]`` training target from expert event annotations.

    Each event is a cone through time: on the annotated frame a disk of radius
    ``radii[0]`` (4), on the next frame radius ``radii[1]`` (2), then a single pixel
    (radius 0), as ExoDeepFinder draws it. A disk of radius r holds the pixels with
    ``dy² + dx² <= r²``; coordinates are rounded to the nearest pixel. Parts of a cone that
    fall outside the movie are clipped.

    Parameters
    ----------
    events : DataFrame or path
        Expert annotations (XML/CSV/...; ``x, y`` in pixels, ``z`` = frame).
    shape : tuple or array
        ``(t, y, x)``, or the movie itself (its shape is used).
    radii : sequence of float
        Disk radius per frame from the annotated one on; its length is the cone's duration.
    label : int, optional
        Value painted (default: each row's ``class_label``).
    chunks : tuple, optional
        Dask chunks of the result.
    check_label : int or None
        Refuse annotations whose class is not this (ExoDeepFinder: 1); ``None`` skips it.

    Returns
    -------
    xarray.DataArray
        Lazy uint8 label map, dims ``(t, y, x)``.

    Raises
    ------
    FormatError
        A class label other than ``check_label``, or an event outside the movie; the
        message names the annotation file.

    Examples
    --------
    >>> target = event_targets("expert_annotation.xml", (1000, 300, 400))  # doctest: +SKIP
    >>> tomochunk.write_volume(target, "expert_segmentation.zarr")  # doctest: +SKIP
    """
    shape = _shape_of(shape)
    df = check_events(events, shape, label=check_label)
    return paint_objects([(df, label, radii)], shape, chunks=chunks)


def _shape_of(shape):
    if hasattr(shape, "shape") and not isinstance(shape, tuple):
        return tuple(int(s) for s in shape.shape)
    if isinstance(shape, (str, Path)):
        return tuple(_movie_array(shape)[0].shape)
    return tuple(int(s) for s in shape)


# --- spot detection ------------------------------------------------------------------------

def _log_peaks(block, *, sigma, threshold, min_distance, core, t_offset, y_offset, x_offset):
    """Scale-normalised LoG peaks of a block of frames; only peaks inside ``core`` are returned.

    The response of each frame is standardised by its median and robust noise (1.4826 MAD),
    so ``threshold`` is in noise units and does not depend on the movie's intensity scale.
    """
    from scipy import ndimage as ndi

    img = np.asarray(block, dtype=np.float32)
    # the LoG in y, x only (gaussian_laplace with sigma 0 in t would add a 2nd derivative in t)
    sig = (0, sigma, sigma)
    resp = -(sigma ** 2) * (ndi.gaussian_filter(img, sig, order=(0, 2, 0)) + ndi.gaussian_filter(img, sig, order=(0, 0, 2)))
    flat = resp.reshape(resp.shape[0], -1)
    med = np.median(flat, axis=1)
    mad = np.median(np.abs(flat - med[:, None]), axis=1) * 1.4826
    z = (resp - med[:, None, None]) / np.maximum(mad, 1e-12)[:, None, None]
    size = (1, 2 * min_distance + 1, 2 * min_distance + 1)
    peaks = (z == ndi.maximum_filter(z, size=size, mode="nearest")) & (z > threshold)
    (cy0, cy1), (cx0, cx1) = core
    peaks[:, :cy0] = False
    peaks[:, cy1:] = False
    peaks[:, :, :cx0] = False
    peaks[:, :, cx1:] = False
    t, y, x = np.nonzero(peaks)
    return np.stack([t + t_offset, y + y_offset - cy0, x + x_offset - cx0, z[t, y, x]], axis=1) \
        if t.size else np.zeros((0, 4))


def _blob_peaks(block, *, sigma, threshold, min_distance, core, t_offset, y_offset, x_offset):
    """skimage ``blob_log`` per frame on the block's 1-99 percentile-normalised frames."""
    from skimage.feature import blob_log

    lo_s, hi_s = (sigma, sigma) if np.isscalar(sigma) else sigma
    (cy0, cy1), (cx0, cx1) = core
    rows = []
    for i, frame in enumerate(np.asarray(block, dtype=np.float32)):
        lo, hi = np.percentile(frame, (1, 99))
        f = np.clip((frame - lo) / max(hi - lo, 1e-12), 0, 1)
        for y, x, s in blob_log(f, min_sigma=lo_s, max_sigma=hi_s, num_sigma=max(1, int(hi_s - lo_s) + 1),
                                threshold=threshold, exclude_border=False):
            if cy0 <= y < cy1 and cx0 <= x < cx1:
                rows.append((i + t_offset, y + y_offset - cy0, x + x_offset - cx0, s))
    return np.asarray(rows, float).reshape(-1, 4)


def detect_spots(movie, *, method="log", threshold=None, sigma=1.5, min_distance=3, frames_per_block=64,
                 tile=None, labels=False, spot_radius=2):
    """Detect bright spots in every frame of a movie, distributed over blocks of frames.

    A stand-in for ExoDeepFinder's Atlas detector that needs no external binary. Blocks
    hold ``frames_per_block`` frames and, if ``tile`` is given, tiles of ``tile`` pixels in
    y and x with a halo of ``ceil(4 sigma) + min_distance`` pixels, so peaks near tile edges
    are found once. Runs on the current Dask client if there is one.

    Parameters
    ----------
    movie : path or array
        ``[t, y, x]`` (path, numpy, dask or xarray).
    method : {"log", "blob_log"}
        ``"log"``: scale-normalised Laplacian of Gaussian at ``sigma``, standardised per frame
        by its median and robust noise (MAD), local maxima at least ``min_distance`` apart
        above ``threshold`` noise units (default 5). ``"blob_log"``: ``skimage.feature.blob_log``
        per frame on 1-99 percentile-normalised frames; ``sigma`` may be ``(min, max)``;
        ``threshold`` is skimage's (default 0.1).
    sigma : float
        Spot scale in pixels (Gaussian sigma; about the spot radius / sqrt(2)).
    frames_per_block : int
        Frames per task.
    tile : int, optional
        Split frames into tiles of this size in y and x (default: whole frames, whose
        per-frame noise estimate is then exact).
    labels : bool
        Also return a lazy label map with a disk of ``spot_radius`` (class 1) per spot.

    Returns
    -------
    DataFrame or (DataFrame, xarray.DataArray)
        One row per spot: ``class_label`` 1, ``x, y`` (pixels), ``z`` (frame), ``score``
        (the peak's response in noise units for "log", the blob sigma for "blob_log").

    Examples
    --------
    >>> spots = detect_spots("cell1.zarr", threshold=5, sigma=1.5)  # doctest: +SKIP
    >>> spots[["x", "y", "z", "score"]].head()  # doctest: +SKIP
    """
    import dask
    import dask.array as da
    import pandas as pd

    data, path = _movie_array(movie)
    if method not in ("log", "blob_log"):
        raise ValueProblem(f"unknown spot detection method {method!r} (expected 'log' or 'blob_log')")
    if threshold is None:
        threshold = 5.0 if method == "log" else 0.1
    smax = sigma if np.isscalar(sigma) else max(sigma)
    if smax <= 0:
        raise ValueProblem(f"sigma must be > 0, got {sigma}")
    T, Y, X = data.shape
    ty = Y if tile is None else min(int(tile), Y)
    tx = X if tile is None else min(int(tile), X)
    data = data.rechunk((min(int(frames_per_block), T), ty, tx))
    halo = int(np.ceil(4 * smax)) + int(min_distance)
    hy = 0 if ty == Y else halo
    hx = 0 if tx == X else halo
    padded = da.overlap.overlap(data, depth={0: 0, 1: hy, 2: hx}, boundary="reflect") if (hy or hx) else data
    fn = _log_peaks if method == "log" else _blob_peaks
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
    parts = []
    blocks = padded.to_delayed()
    for i, t0 in enumerate(starts[0]):
        for j, y0 in enumerate(starts[1]):
            for k, x0 in enumerate(starts[2]):
                cy = (hy, hy + data.chunks[1][j])
                cx = (hx, hx + data.chunks[2][k])
                parts.append(dask.delayed(fn)(blocks[i, j, k], sigma=sigma, threshold=threshold,
                                              min_distance=int(min_distance), core=(cy, cx), t_offset=int(t0),
                                              y_offset=int(y0), x_offset=int(x0)))
    found = dask.compute(*parts)
    arr = np.concatenate(found, axis=0) if found else np.zeros((0, 4))
    arr = arr[np.lexsort((arr[:, 2], arr[:, 1], arr[:, 0]))] if len(arr) else arr
    df = pd.DataFrame({"class_label": np.ones(len(arr), int), "x": arr[:, 2].astype(float),
                       "y": arr[:, 1].astype(float), "z": arr[:, 0].astype(float), "score": arr[:, 3]})
    df.attrs["voxel_size"] = 1.0
    log.info("detected %d spots in %d frames (%s)", len(df), T, path or "movie")
    if labels:
        return df, paint_objects([(df, SPOT, (spot_radius,))], (T, Y, X))
    return df


def _frame_components(block, t_offset):
    """Per-frame 2D connected components (8-connected) of a block: rows t, y, x, size."""
    from scipy import ndimage as ndi

    rows = []
    for i, frame in enumerate(np.asarray(block)):
        lab, n = ndi.label(frame > 0, structure=np.ones((3, 3), bool))
        if not n:
            continue
        idx = np.arange(1, n + 1)
        cy, cx = np.array(ndi.center_of_mass(np.ones_like(lab), lab, idx)).T
        size = ndi.sum_labels(np.ones_like(lab), lab, idx)
        rows.append(np.stack([np.full(n, i + t_offset), cy, cx, size], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def spots_from_labelmap(labelmap, *, frames_per_block=64):
    """Objects from a detector's binary/label map: one spot per 2D connected component per frame.

    The detector (Atlas, or :func:`detect_spots` with ``labels=True``) works frame by frame,
    so spots are the per-frame components (8-connected), as ExoDeepFinder takes them.
    Work is split into blocks of whole frames.

    Returns
    -------
    DataFrame
        ``class_label`` 1, ``x, y`` (component centroid), ``z`` (frame), ``size`` (pixels).

    Examples
    --------
    >>> spots = spots_from_labelmap("detector_segmentation.zarr")  # doctest: +SKIP
    """
    import dask
    import pandas as pd

    data, _ = _movie_array(labelmap)
    T, Y, X = data.shape
    data = data.rechunk((min(frames_per_block, T), Y, X))
    starts = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]]).astype(int)
    blocks = data.to_delayed().ravel()
    arr = dask.compute(*[dask.delayed(_frame_components)(b, int(t0)) for b, t0 in zip(blocks, starts)])
    arr = np.concatenate(arr) if arr else np.zeros((0, 4))
    df = pd.DataFrame({"class_label": np.ones(len(arr), int), "x": arr[:, 2], "y": arr[:, 1],
                       "z": arr[:, 0], "size": arr[:, 3].astype(int)})
    df.attrs["voxel_size"] = 1.0
    return df


def import_spots(path, *, label=None):
    """Read an external spot detector's output: an object list or a label map.

    Parameters
    ----------
    path : path
        An object-list file (XML, CSV, STAR, ... via :func:`tomochunk.read_objects`; every
        row becomes class 1) or a label/binary map (Zarr, HDF5, TIFF, MRC; each per-frame
        connected component becomes a spot, see :func:`spots_from_labelmap`).
    label : int, optional
        Object lists only: keep only rows of this class.

    Returns
    -------
    DataFrame
        Spots, ``class_label`` 1.

    Examples
    --------
    >>> spots = import_spots("atlas_spots.csv")  # doctest: +SKIP
    """
    from ..io.volume import _kind

    path = Path(path)
    if not path.exists():
        raise MissingError("no such spot file", path)
    try:
        kind = _kind(path)
    except FormatError:
        kind = "objects"
    if kind in ("zarr", "mrc", "h5", "tiff", "tiff-folder") and path.suffix.lower() not in (".csv", ".xml"):
        return spots_from_labelmap(path)
    df, _ = _objects(path, "spot")
    if label is not None:
        df = df[df["class_label"] == label]
    df = df.copy()
    df["class_label"] = SPOT
    return df.reset_index(drop=True)


# --- merging detector spots with expert events -------------------------------------------

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
    from scipy.spatial import cKDTree

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


def merge_annotations(spots, events, shape, *, match_radius=5.0, match_frames=None, max_spots=None, seed=0,
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
      ``max_spots`` spots, sampled without replacement with ``seed``.

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
    import dask.array as da
    import pandas as pd

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
        from ..io.volume import write_volume

        write_volume(labels, labels_path, overwrite=overwrite, levels=1)
    if objects_path is not None:
        from ..io.objects import write_objects

        write_objects(objs, objects_path)
    return labels, objs


def _erase_components(block, removed, block_info=None):
    """Class-1 map of a detector block, without the per-frame components listed in ``removed``."""
    from scipy import ndimage as ndi

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


# --- segmentation -> events ----------------------------------------------------------------

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
    from .cluster import cluster

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


# --- batch conversion ---------------------------------------------------------------------

def find_movie_folders(parent):
    """Every folder under ``parent`` (itself included) that directly holds ``.tif/.tiff`` files, sorted."""
    from ..io.tiff import is_tiff

    parent = Path(parent)
    if not parent.is_dir():
        raise MissingError("no such folder", parent)
    out = []
    for d in sorted([parent] + [p for p in parent.rglob("*") if p.is_dir()]):
        if d.suffix.lower() == ".zarr" or any(q.suffix.lower() == ".zarr" for q in d.relative_to(parent).parents
                                              if q.name):
            continue
        if any(f.is_file() and is_tiff(f) for f in d.iterdir()):
            out.append(d)
    return out


def convert_movies(parent, outdir, *, chunks=None, levels=1, overwrite=False, ngff="0.4", on_error="raise",
                   progress=False):
    """Convert every TIFF-frame folder under ``parent`` to an OME-Zarr movie, in one call.

    Each movie folder ``parent/a/b`` becomes ``outdir/a/b.zarr`` (``parent`` itself, if it
    holds frames, becomes ``outdir/<parent name>.zarr``). Complete outputs are skipped;
    interrupted ones resume (:func:`tomochunk.convert`). Frames are checked first: a gap
    in the frame numbers raises an error naming the file after the gap.

    Parameters
    ----------
    levels : int
        Multiscale levels (movies are downsampled in y, x only). Default 1: training and
        segmentation read full resolution.
    on_error : {"raise", "skip"}
        ``"skip"`` logs bad movies and goes on; they are listed in the result as errors.

    Returns
    -------
    dict
        ``{folder: {"output": path, "status": "converted"|"skipped"|"error", "error": msg}}``.

    Examples
    --------
    >>> convert_movies("experiment/", "zarr/")  # doctest: +SKIP
    """
    from ..errors import TomochunkError
    from ..io.convert import convert
    from ..io.omezarr import is_complete

    parent, outdir = Path(parent), Path(outdir)
    folders = find_movie_folders(parent)
    if not folders:
        raise MissingError("no folder of TIFF frames found", parent)
    result = {}
    for folder in folders:
        rel = folder.relative_to(parent)
        dst = outdir / (str(rel) + ".zarr" if str(rel) != "." else parent.name + ".zarr")
        entry = {"output": str(dst)}
        if dst.exists() and not overwrite and is_complete(dst):
            entry["status"] = "skipped"
            log.info("skip complete %s", dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                convert(folder, dst, chunks=chunks, levels=levels, overwrite=overwrite, ngff=ngff, progress=progress)
                entry["status"] = "converted"
            except TomochunkError as exc:
                if on_error == "raise":
                    raise
                log.warning("%s", exc)
                entry.update(status="error", error=str(exc))
        result[str(folder)] = entry
    return result


# --- dataset manifest --------------------------------------------------------------------

def make_dataset(movies, targets, objects, outdir, *, valid_fraction=0.2, seed=0, name="dataset.json"):
    """Write a train/valid split of movies as a manifest (JSON), no symlinks or copies.

    Parameters
    ----------
    movies, targets, objects : sequence of paths
        Per movie: the movie, its label map (target) and its object list, in the same order.
    valid_fraction : float
        Share of movies held out for validation (at least one of each when there are two
        or more movies).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Path
        The manifest: ``{"train": [{"movie", "target", "objects"}...], "valid": [...],
        "seed", "valid_fraction"}``, paths absolute.

    Examples
    --------
    >>> make_dataset(["m1.zarr", "m2.zarr"], ["t1.zarr", "t2.zarr"], ["o1.xml", "o2.xml"], "ds/")  # doctest: +SKIP
    """
    movies, targets, objects = list(movies), list(targets), list(objects)
    if not (len(movies) == len(targets) == len(objects)):
        raise ValueProblem(f"need as many targets and object lists as movies: {len(movies)} movies, "
                           f"{len(targets)} targets, {len(objects)} object lists")
    if not movies:
        raise ValueProblem("no movies given")
    if not 0 <= valid_fraction < 1:
        raise ValueProblem(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    for p in movies + targets + objects:
        if not Path(p).exists():
            raise MissingError("dataset file does not exist", p)
    n = len(movies)
    n_valid = int(round(n * valid_fraction))
    if valid_fraction > 0 and n >= 2:
        n_valid = min(max(n_valid, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    entries = [{"movie": str(Path(m).resolve()), "target": str(Path(t).resolve()),
                "objects": str(Path(o).resolve())} for m, t, o in zip(movies, targets, objects)]
    manifest = {"seed": int(seed), "valid_fraction": float(valid_fraction),
                "train": [entries[i] for i in sorted(order[n_valid:])],
                "valid": [entries[i] for i in sorted(order[:n_valid])]}
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / name
    out.write_text(json.dumps(manifest, indent=2))
    log.info("dataset %s: %d train, %d valid movies", out, len(manifest["train"]), n_valid)
    return out


def read_dataset(manifest):
    """Read a manifest written by :func:`make_dataset`: ``{"train": [...], "valid": [...]}``."""
    p = Path(manifest)
    if not p.exists():
        raise MissingError("no such dataset manifest", p)
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise FormatError(f"not a JSON manifest ({exc})", p) from None
    for split in ("train", "valid"):
        if split not in data:
            raise FormatError(f"manifest has no {split!r} list", p)
        for i, e in enumerate(data[split]):
            for k in ("movie", "target", "objects"):
                if k not in e:
                    raise FormatError(f"{split} entry {i} has no {k!r}", p)
    return data


# --- training and segmentation with the anisotropic network ----------------------------------

#: Training patches for movies ``(t, y, x)``: the anisotropic network pools only in y and x,
#: so t may be any size; y and x must be multiples of 4.
MOVIE_TRAIN_PATCH = (16, 48, 48)
#: Segmentation patch side: ExoDeepFinder's default (160 frames x 160 x 160 pixels).
MOVIE_SEGMENT_PATCH = 160
N_CLASSES = 3  # background, bright spot, exocytosis
#: Cross-entropy weights of background, bright spot and exocytosis used by :func:`train_events`.
#: An event's cone is about 63 voxels, 0.2 % of a (16, 48, 48) patch centred on it: with
#: Dice (or Dice + unweighted cross-entropy) alone the network learns background everywhere
#: first and stays there for many epochs (measured on phantom movies: F1 0 after 6 epochs);
#: these weights give the rare classes a gradient from the first step.
EVENT_CLASS_WEIGHTS = (1.0, 10.0, 50.0)


def _dataset_lists(manifest):
    """(movies, targets, objects_train, objects_valid) from a manifest; ``tomo`` = index in movies."""
    import pandas as pd

    data = read_dataset(manifest)
    entries = data["train"] + data["valid"]
    movies = [e["movie"] for e in entries]
    targets = [e["target"] for e in entries]
    lists = []
    for i, e in enumerate(entries):
        df, _ = _objects(e["objects"], "object list")
        df = df.copy()
        df["tomo"] = i
        lists.append(df)
    n_train = len(data["train"])
    ot = pd.concat(lists[:n_train], ignore_index=True) if n_train else _empty_objects()
    ov = pd.concat(lists[n_train:], ignore_index=True) if len(lists) > n_train else ot.iloc[:0]
    for df in (ot, ov):
        df.attrs["voxel_size"] = 1.0
    return movies, targets, ot, ov


def train_events(manifest, outdir, *, patch_size=MOVIE_TRAIN_PATCH, epochs=50, steps_per_epoch=100, batch_size=4,
                 filters="default", model=None, ce_weight=1.0, class_weights=EVENT_CLASS_WEIGHTS, **kw):
    """Train the anisotropic DeepFinder network (3 classes) on a dataset manifest.

    A thin wrapper over :func:`tomochunk.nn.train.train` with movie defaults: the
    ``(1, 2, 2)``-pooling network of ExoDeepFinder, patches of ``(16, 48, 48)`` frames x
    pixels, y/x flips and swaps as augmentation. Movies are normalised per frame to their
    1-99 percentiles (as ExoDeepFinder), then each patch to zero mean and unit variance
    (as :func:`~tomochunk.nn.train.train` does); :func:`segment_movie` applies the same.

    Parameters
    ----------
    manifest : path
        Written by :func:`make_dataset`.
    outdir : path
        Checkpoints, history and the final model (``model_final.keras`` and
        ``net_weights_FINAL.h5``).
    filters : {"default", "small"} or tuple
        Network width (ExoDeepFinder: the default 32/48/64).
    model : keras.Model or path, optional
        Start from this network (e.g. ExoDeepFinder weights, for fine-tuning).
    ce_weight : float
        Weight of the cross-entropy term added to the Tversky (Dice) loss. Default 1;
        0 gives DeepFinder's pure Tversky loss, which needs long runs on these rare classes.
    class_weights : sequence of 3 floats or None
        Cross-entropy weights of background, spot and exocytosis (default
        :data:`EVENT_CLASS_WEIGHTS`).
    **kw
        Passed on to :func:`tomochunk.nn.train.train` (``lr``, ``shift``, ``resume``, ``seed``, ...).

    Returns
    -------
    (keras.Model, pandas.DataFrame)
        The trained network and the per-epoch history.

    Examples
    --------
    >>> model, history = train_events("dataset/dataset.json", "model/", epochs=30)  # doctest: +SKIP
    """
    from ..nn.train import train
    from .normalize import normalize

    movies, targets, ot, ov = _dataset_lists(manifest)
    vols = [normalize(_movie_array(m)[0], method="percentile") for m in movies]
    tgts = [_movie_array(t)[0] for t in targets]
    if isinstance(model, (str, Path)):
        model = _load_movie_model(model)
    kw.setdefault("augment", "movie")
    if kw.get("loss", "tversky") == "tversky" and ce_weight:
        kw.update(ce_weight=ce_weight, class_weights=class_weights)
    else:
        kw["ce_weight"] = ce_weight
    import dask

    # patches are small reads for this process: a thread pool here beats a round trip to a cluster
    with dask.config.set(scheduler="threads"):
        return train(vols, tgts, ot, ov, n_classes=N_CLASSES, patch_size=patch_size, batch_size=batch_size,
                     epochs=epochs, steps_per_epoch=steps_per_epoch, model=model, out_dir=outdir,
                     filters=filters, anisotropic=True, **kw)


def _load_movie_model(model):
    from ..nn.models import load_model

    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.exists():
            raise MissingError("no such model file", p)
        # ExoDeepFinder's weight files are for the (1, 2, 2)-pooling network
        return load_model(p, anisotropic=True) if p.suffix.lower() == ".h5" else load_model(p)
    return model


def segment_movie(movie, model, *, patch_size=MOVIE_SEGMENT_PATCH, normalize=None, **kw):
    """Lazy ``[c, t, y, x]`` class scores of a movie (background, spot, exocytosis).

    :func:`tomochunk.nn.segment.segment` with movie defaults: 160-sided patches and
    ExoDeepFinder ``.h5`` weights loaded into the anisotropic network.

    Parameters
    ----------
    normalize : {"percentile", "percentile+meanstd"}, optional
        ``"percentile"``: every frame mapped so its 1st/99th percentiles go to 0/1, what
        ExoDeepFinder trains and segments on. ``"percentile+meanstd"``: then the whole movie
        to zero mean, unit variance, matching :func:`train_events` (whose patches are
        standardised). Default: ``"percentile"`` for ``.h5`` (ExoDeepFinder) weights, else
        ``"percentile+meanstd"``.
    **kw
        Passed on to :func:`tomochunk.nn.segment.segment` (``crop``, ``blend``, ``client``, ...).

    Examples
    --------
    >>> scores = segment_movie("cell1.zarr", "model/model_final.keras")  # doctest: +SKIP
    """
    from ..nn.segment import segment
    from .normalize import normalize as _normalize

    if normalize is None:
        normalize = "percentile" if isinstance(model, (str, Path)) and str(model).lower().endswith(".h5") \
            else "percentile+meanstd"
    if normalize not in ("percentile", "percentile+meanstd"):
        raise ValueProblem(f"unknown normalize {normalize!r} (expected 'percentile' or 'percentile+meanstd')")
    data, _ = _movie_array(movie)
    data = _normalize(data, method="percentile")
    scores = segment(data, _load_movie_model(model), patch_size=patch_size,
                     normalize="meanstd" if normalize == "percentile+meanstd" else None, **kw)
    return scores.rename({"z": "t"}) if "z" in scores.dims else scores


def segment_movies(movies, model, outdir, *, patch_size=MOVIE_SEGMENT_PATCH, overwrite=False, scores=False, **kw):
    """Segment movies into ``outdir/<movie>_segmentation.zarr`` label maps (0, 1 spot, 2 exocytosis).

    Complete outputs are skipped unless ``overwrite``; ``scores=True`` also writes the
    float class scores (``<movie>_scores.zarr``).

    Returns
    -------
    dict
        ``{movie: output path}``.

    Examples
    --------
    >>> segment_movies(["cell1.zarr", "cell2.zarr"], "model.keras", "seg/")  # doctest: +SKIP
    """
    import shutil
    import tempfile

    import dask.array as da

    from ..io.omezarr import is_complete
    from ..io.volume import write_volume
    from ..nn.segment import labelmap

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if kw.get("normalize") is None:  # decided by the model file, before it is loaded
        kw["normalize"] = "percentile" if isinstance(model, (str, Path)) and str(model).lower().endswith(".h5") \
            else "percentile+meanstd"
    net = _load_movie_model(model)
    if isinstance(movies, (str, Path)):
        movies = [movies]
    done = {}
    for m in movies:
        stem = Path(m).name[:-5] if str(m).endswith(".zarr") else Path(m).stem
        dst = outdir / f"{stem}_segmentation.zarr"
        done[str(m)] = dst
        if dst.exists() and not overwrite and is_complete(dst):
            log.info("skip complete %s", dst)
            continue
        sc = segment_movie(m, net, patch_size=patch_size, **kw)
        # Compute the scores once, in one graph, into a Zarr array: write_volume computes region
        # by region, and a region that cuts a segmentation block recomputes the whole block
        # (2.2x the time at 128 frames, more on long movies). Label map and score map are then
        # read back from it.
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}_scores_", dir=outdir))
        try:
            arr = sc.data.astype(np.float16 if scores else np.float32)
            arr = arr.rechunk((arr.shape[0], min(64, arr.shape[1])) + arr.shape[2:])
            da.to_zarr(arr, str(tmp / "scores.zarr"), overwrite=True)
            sc = sc.copy(data=da.from_zarr(str(tmp / "scores.zarr")))
            if scores:
                write_volume(sc, outdir / f"{stem}_scores.zarr", levels=1, overwrite=True)
            lab = labelmap(sc)
            write_volume(_as_tyx(getattr(lab, "data", lab).astype(np.uint8)), dst, levels=1, overwrite=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("segmented %s -> %s", m, dst)
    return done
