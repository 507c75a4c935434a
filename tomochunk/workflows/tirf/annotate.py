"""Expert event annotations -> training targets: checks, and cones painted lazily into ``[t, y, x]`` maps."""

from __future__ import annotations

import dask.array as da
import numpy as np

from ...errors import FormatError, ShapeError, ValueProblem
from ._common import EVENT_RADII, _as_tyx, _movie_chunks, _objects, _points, _shape_of


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
