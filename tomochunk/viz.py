"""PNG figures people look at: orthoslices with a label overlay and picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _slice(arr, axis, index):
    """One 2D slice of a numpy/dask/xarray array, loading only that slice."""
    data = arr.data if hasattr(arr, "dims") else arr
    sl = [slice(None)] * 3
    # a one-slice range, dropped after loading: some lazy readers keep an integer-indexed axis
    sl[axis] = slice(int(index), int(index) + 1)
    out = data[tuple(sl)]
    return np.take(np.asarray(out.compute() if hasattr(out, "compute") else out), 0, axis=axis)


def orthoslices(volume, path, *, labels=None, objects=None, position=None, title=None,
                slab=3, max_points=5000, truth=None, classes=None, voxel_size=None):
    """Save a PNG with the three central orthoslices (xy, xz, yz) of a volume.

    Parameters
    ----------
    volume : array-like
        ``[z, y, x]`` numpy, dask or xarray; only three slices are read.
    path : str or Path
        Output PNG.
    labels : array-like, optional
        Integer label map drawn as a translucent overlay (0 = transparent).
    objects : pandas.DataFrame, optional
        Picks (``x, y, z`` in voxels, optional ``class_label``) within ``slab`` voxels
        of each slice are drawn as circles.
    position : tuple of int, optional
        ``(z, y, x)`` of the slices (default: the centre).
    truth : pandas.DataFrame, optional
        Ground truth drawn as white crosses (within ``slab`` too), so that misses show.
    classes : dict, optional
        ``{label: name}`` for the legend (default: ``labels.attrs["classes"]``, else "class k").
    voxel_size : float, optional
        Å per voxel for the second axis scale (default: ``volume.attrs["voxel_size"]``).

    Picks are drawn in one colour (yellow) that no label colour uses, so they stay
    visible on labels of any class; the figure states the slab width.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> vol = np.random.default_rng(0).normal(size=(8, 16, 16))
    >>> png = orthoslices(vol, Path(tempfile.mkdtemp()) / "tomo.png", labels=(vol > 1).astype(np.uint8))
    >>> png.read_bytes()[1:4]
    b'PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    shape = tuple(int(s) for s in volume.shape[-3:])
    pos = tuple(position) if position is not None else tuple(s // 2 for s in shape)
    # (axis cut, image rows, image cols, name)
    views = [(0, "y", "x", f"xy (z={pos[0]})"), (1, "z", "x", f"xz (y={pos[1]})"),
             (2, "z", "y", f"yz (x={pos[2]})")]
    widths = [shape[2], shape[2], shape[1]]
    fig, axes = plt.subplots(1, 3, figsize=(4 * 3, 4.4), gridspec_kw={"width_ratios": widths})
    cmap = ListedColormap(plt.get_cmap("tab10").colors)
    if voxel_size is None:
        voxel_size = getattr(volume, "attrs", {}).get("voxel_size")
    if classes is None:
        classes = getattr(labels, "attrs", {}).get("classes")
    seen = set()
    for ax, (axis, rows, cols, name) in zip(axes, views):
        img = _slice(volume, axis, pos[axis]).astype(np.float32)
        lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        if labels is not None:
            lab = _slice(labels, axis, pos[axis])
            ax.imshow(np.ma.masked_equal(lab % 10, 0) if lab.any() else np.ma.masked_all(lab.shape),
                      cmap=cmap, vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
            seen.update(int(v) for v in np.unique(lab) if v)
        for objs, style in ((truth, dict(marker="+", s=60, c="white", linewidths=1.2)),
                            (objects, dict(s=40, facecolors="none", edgecolors="yellow", linewidths=1.2))):
            if objs is not None and len(objs):
                cut = "zyx"[axis]
                near = objs[np.abs(objs[cut].to_numpy(float) - pos[axis]) <= slab].head(max_points)
                ax.scatter(near[cols], near[rows], **style, path_effects=[_stroke()])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{cols} (voxels)")
        ax.set_ylabel(f"{rows} (voxels)")
        if voxel_size:
            _angstrom_axes(ax, float(voxel_size), cols, rows)
    _legend(fig, cmap, sorted(seen), classes or {}, objects, truth, slab)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _stroke():
    """A dark outline, so that markers read on bright and dark voxels alike."""
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=2.5, foreground="black")


def _angstrom_axes(ax, vs, cols, rows):
    """Second axes (top, right) in Å beside the voxel axes."""
    fwd, back = (lambda v: v * vs), (lambda a: a / vs)
    ax.secondary_xaxis("top", functions=(fwd, back)).set_xlabel(f"{cols} (Å)", fontsize=8)
    ax.secondary_yaxis("right", functions=(fwd, back)).set_ylabel(f"{rows} (Å)", fontsize=8)


def _legend(fig, cmap, labels, classes, objects, truth, slab):
    """Class names of the labels drawn, the pick and truth markers, and the slab the markers come from."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=cmap(k % 10), alpha=0.6, label=str(classes.get(k, f"class {k}"))) for k in labels]
    if objects is not None:
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="yellow", label="picks"))
    if truth is not None:
        handles.append(Line2D([], [], marker="+", ls="", mec="black", label="truth"))
    note = ""
    if objects is not None or truth is not None:
        note = f"markers: objects within ±{slab} slices of each slice"
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=8)
    if handles:
        fig.legend(handles=handles, loc="lower left", ncol=min(len(handles), 6), fontsize=8, frameon=False)
