"""PNG figures people look at: orthoslices with a label overlay and picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _slice(arr, axis, index):
    """One 2D slice of a numpy/dask/xarray array, loading only that slice."""
    data = arr.data if hasattr(arr, "dims") else arr
    sl = [slice(None)] * 3
    sl[axis] = index
    out = data[tuple(sl)]
    return np.asarray(out.compute() if hasattr(out, "compute") else out)


def orthoslices(volume, path, *, labels=None, objects=None, position=None, title=None,
                slab=3, max_points=5000):
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
    for ax, (axis, rows, cols, name) in zip(axes, views):
        img = _slice(volume, axis, pos[axis]).astype(np.float32)
        lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        if labels is not None:
            lab = _slice(labels, axis, pos[axis])
            ax.imshow(np.ma.masked_equal(lab % 10, 0) if lab.any() else np.ma.masked_all(lab.shape),
                      cmap=cmap, vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
        if objects is not None and len(objects):
            cut = "zyx"[axis]
            near = objects[np.abs(objects[cut].to_numpy(float) - pos[axis]) <= slab].head(max_points)
            colors = near["class_label"].to_numpy() % 10 if "class_label" in near else 1
            ax.scatter(near[cols], near[rows], s=40, facecolors="none",
                       edgecolors=cmap(colors) if np.ndim(colors) else "yellow", linewidths=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
