"""Bright-spot detection in movies (a stand-in for Atlas) and import of external detectors' output."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..._blocks import chunk_starts
from ..._log import get_logger
from ...errors import MissingError, ValueProblem
from ...io.h5 import H5_SUFFIXES
from ...io.mrc import MRC_SUFFIXES
from ...io.tiff import TIFF_SUFFIXES
from ...io.volume import is_zarr
from ._common import SPOT, _movie_array, _objects
from .annotate import paint_objects

log = get_logger(__name__)


def _log_peaks(block, *, sigma, threshold, min_distance, core, t_offset, y_offset, x_offset):
    """Scale-normalised LoG peaks of a block of frames; only peaks inside ``core`` are returned.

    The response of each frame is standardised by its median and robust noise (1.4826 MAD),
    so ``threshold`` is in noise units and does not depend on the movie's intensity scale.
    """
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
    starts = chunk_starts(data.chunks)
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
    data, _ = _movie_array(labelmap)
    T, Y, X = data.shape
    data = data.rechunk((min(frames_per_block, T), Y, X))
    starts = chunk_starts(data.chunks)[0]
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
    path = Path(path)
    if not path.exists():
        raise MissingError("no such spot file", path)
    if _is_map(path):
        return spots_from_labelmap(path)
    df, _ = _objects(path, "spot")
    if label is not None:
        df = df[df["class_label"] == label]
    df = df.copy()
    df["class_label"] = SPOT
    return df.reset_index(drop=True)



def _is_map(path: Path) -> bool:
    """A volume the readers open (Zarr, a TIFF folder, MRC, HDF5, TIFF), not an object list."""
    suf = path.suffix.lower()
    return is_zarr(path) or path.is_dir() or suf in MRC_SUFFIXES + H5_SUFFIXES + TIFF_SUFFIXES
