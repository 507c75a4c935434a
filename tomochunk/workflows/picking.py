"""Picking from files and stores: the one dispatch from a method name to the op that picks.

``tomochunk pick``, ``tomochunk run`` and :func:`pick_inputs` all go through
:func:`pick_volume`, so every method (``cc``, ``meanshift``, ``peaks``, ``centroid``,
``nms``, ``heatmap``) and every option (``units``, ``classes``, ``top_k``, ...) means the
same thing wherever it is used.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._log import get_logger
from .._names import tomo_name
from ..errors import MissingError, TomochunkError, ValueProblem
from ..io.omezarr import label_names
from ..io.volume import open_volume
from ..ops.cluster import cluster
from ..ops.heatmap import decode_heatmap
from ..ops.pick import pick

#: Methods that cluster a label map; the others pick on a score map.
LABEL_METHODS = ("cc", "meanshift")
#: methods whose objects carry a voxel count (``size``), which the size filter reads
SIZED_METHODS = LABEL_METHODS + ("centroid",)
SCORE_METHODS = ("peaks", "centroid", "nms", "heatmap")
METHODS = LABEL_METHODS + SCORE_METHODS

#: Size filter of ``cc`` / ``meanshift`` picks: objects smaller than this fraction of the 5th
#: percentile of their class's training-target voxel counts (the model's ``sizes.json``) are
#: dropped. Measured on the hard phantom by ``benchmarks/bench_accuracy.py``.
SIZE_FACTOR = 0.25

log = get_logger(__name__)


def _per_voxel(value, vs, units, power=1):
    if units == "voxel":
        return value
    if units != "angstrom":
        raise ValueProblem(f"unknown units {units!r} (voxel or angstrom)")
    if not vs:
        raise ValueProblem("units='angstrom' needs a voxel size")
    return value / vs ** power


def pick_volume(vol, *, method: str = "meanshift", radius: float = 5, threshold: float = 0.5,
                min_size: float = 1, min_spacing: float = 5, margin: float = 0, top_k=None, classes=None,
                units: str = "voxel", voxel_size=None, z_range=None, border: float = 0, smooth: float = 0):
    """Pick objects on an opened label or score map, by method name.

    ``method`` is ``"cc"`` / ``"meanshift"`` (:func:`~tomochunk.ops.cluster.cluster` on a
    label map), ``"peaks"`` / ``"centroid"`` / ``"nms"`` (:func:`~tomochunk.ops.pick.pick` on
    a score map) or ``"heatmap"`` (:func:`~tomochunk.ops.heatmap.decode_heatmap`: NMS with
    ``min_spacing`` as the half-window, then ``z_range`` (voxels) and ``border`` / ``margin``
    cut-offs and a global top-K, after an optional Gaussian ``smooth``). With
    ``units="angstrom"``, ``radius``, ``min_spacing``, ``margin`` and ``border`` are in Å and
    ``min_size`` in Å³. ``attrs["shape"]`` is the map's ``(z, y, x)`` shape, so a STAR file
    written from the list gets RELION 5's centred Å coordinates.

    Examples
    --------
    >>> lab = np.zeros((8, 8, 8), np.uint8); lab[2:4, 2:4, 2:4] = 1
    >>> df = pick_volume(lab, method="cc")
    >>> df[["class_label", "x", "y", "z"]].to_numpy().tolist(), df.attrs["shape"]
    ([[1.0, 2.5, 2.5, 2.5]], (8, 8, 8))
    """
    if method not in METHODS:
        raise ValueProblem(f"unknown pick method {method!r} ({', '.join(METHODS)})")
    vs = voxel_size if voxel_size is not None else getattr(vol, "attrs", {}).get("voxel_size")
    if classes is not None and np.ndim(classes) == 0:
        classes = [int(classes)]
    if method in LABEL_METHODS:
        r, ms = _per_voxel(float(radius), vs, units), _per_voxel(float(min_size), vs, units, 3)
        df = cluster(vol, radius=r, classes=classes, min_size=int(math.ceil(ms)), method=method, voxel_size=vs)
        if top_k is not None:
            df = df.sort_values("size", ascending=False).groupby("class_label").head(int(top_k))
    elif method == "heatmap":
        ms = _per_voxel(float(min_spacing), vs, units)
        bd = _per_voxel(np.maximum(border, margin), vs, units)
        df = decode_heatmap(vol, threshold=threshold, top_k=top_k, min_distance=ms, z_range=z_range,
                            border=bd, smooth=smooth, classes=classes, voxel_size=vs)
    else:
        df = pick(vol, threshold=threshold, min_size=min_size, min_spacing=min_spacing, margin=margin,
                  mode=method, top_k=top_k, voxel_size=vs, units=units, classes=classes)
    if vs:
        df.attrs["voxel_size"] = float(vs)
    if np.ndim(vol) >= 3:
        # the (z, y, x) voxel grid the coordinates live on: RELION 5's centred Å need it (io.objects.star)
        df.attrs["shape"] = tuple(int(n) for n in np.shape(vol)[-3:])
    return df


def model_sizes(store):
    """The ``sizes.json`` of the model that segmented ``store``, or None.

    ``segment`` records its model's identity in the ``labels/classes`` (or ``labels/scores``)
    record of the store; ``train`` writes ``sizes.json`` beside the model. None when the
    store is not a segmentation, the model is not a file, or has no ``sizes.json``.

    Examples
    --------
    >>> model_sizes("seg/tomo1.zarr")  # doctest: +SKIP
    {'1': {'n': 40, 'p5': 107.5, 'p50': 112.0, 'p95': 116.5}, ...}
    """
    import json

    from ..io._store import _record

    for name in ("classes", "scores"):
        node = Path(store) / "labels" / name
        if not node.exists():
            continue
        try:
            rec = _record(node) or {}
        except TomochunkError:
            continue
        source = rec.get("source")
        # segment records {"model": {...}}; other writers (segment-features) record a plain path
        model = source.get("model") if isinstance(source, dict) else None
        model = model.get("path") if isinstance(model, dict) else None
        if model:
            found = Path(model).parent / "sizes.json"
            if found.is_file():
                try:
                    return json.loads(found.read_text())["classes"]
                except (ValueError, KeyError) as exc:
                    raise ValueProblem(f"unreadable size statistics ({exc})", found) from exc
    return None


def size_filter(objects, sizes, factor: float = SIZE_FACTOR):
    """Drop objects smaller than ``factor`` x the p5 voxel count of their class in ``sizes``.

    ``sizes`` is ``{class: {"p5": ...}}`` (:func:`model_sizes`, ``train``'s ``sizes.json``);
    classes it lacks, and lists without a ``size`` column, are kept whole.

    Examples
    --------
    >>> import pandas as pd
    >>> objs = pd.DataFrame({"class_label": [1, 1, 2], "size": [10, 100, 5]})
    >>> size_filter(objs, {"1": {"p5": 100.0}}, 0.5)["size"].tolist()
    [100, 5]
    """
    if not sizes or not factor or "size" not in objects.columns or len(objects) == 0:
        return objects
    lo = objects["class_label"].map(lambda c: float(factor) * float((sizes.get(str(int(c))) or {}).get("p5", 0)))
    out = objects[objects["size"].to_numpy() >= lo.to_numpy()]
    out.attrs.update(objects.attrs)
    return out


def pick_inputs(path, *, method: str = "meanshift", radius: float = 5, threshold: float = 0.5,
                min_size: float = 1, min_spacing: float = 5, margin: float = 0, top_k=None, classes=None,
                units: str = "voxel", voxel_size=None, level: int = 0, tomo=None, z_range=None,
                border: float = 0, smooth: float = 0, sizes="auto", size_factor: float = SIZE_FACTOR):
    """Open one label or score map from disk and turn it into an object list.

    ``path`` is a segmentation store (its ``labels/classes`` array is used for ``cc`` /
    ``meanshift``, ``labels/scores`` for the other methods), a zarr array or an
    MRC/HDF5/TIFF file; ``method`` and the options are those of :func:`pick_volume`.
    ``sizes`` (``cc``, ``meanshift`` and ``centroid``, whose objects have a voxel count): ``"auto"`` filters the picks by the size
    statistics of the model that segmented the store (:func:`model_sizes`, when known),
    a path to a ``sizes.json`` or a dict uses those, ``None`` keeps every size; see
    :func:`size_filter` and ``size_factor``. The
    ``tomo`` column is ``tomo`` or the path's tomogram name
    (:func:`tomochunk._names.tomo_name`: ``seg/t1.ome.zarr`` gives ``t1``).

    A map on a coarser grid than full resolution (``level > 0``, or maps that ``tomochunk
    segment --level N`` wrote) is picked on its own grid, and the coordinates are then given
    in level-0 voxels of the store's image (else of the map's own level 0), through the NGFF
    scales and translations; ``attrs["voxel_size"]`` is then the level-0 voxel size and
    ``attrs["picked_voxel_size"]`` the voxel size of the map the objects were picked on
    (``size`` stays a voxel count of that map).

    Examples
    --------
    >>> df = pick_inputs("seg/tomo1.zarr", method="meanshift", radius=5)  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise MissingError("no such file or store", p)
    inner = p / "labels" / ("classes" if method in LABEL_METHODS else "scores")
    src = inner if inner.exists() else p
    vol = open_volume(src, level=level)
    try:
        df = pick_volume(vol, method=method, radius=radius, threshold=threshold, min_size=min_size,
                         min_spacing=min_spacing, margin=margin, top_k=top_k, classes=classes, units=units,
                         voxel_size=voxel_size, z_range=z_range, border=border, smooth=smooth)
    except TomochunkError as exc:
        if exc.path is None:
            raise type(exc)(str(exc), src) from exc
        raise
    df = _to_level0(df, vol, _reference(p, src, level))
    if method in SIZED_METHODS and sizes is not None and size_factor:
        if "picked_voxel_size" in df.attrs:
            # the statistics count level-0 voxels of the training targets; a binned map's do not compare
            log.info("%s: picked on a binned map, the size filter is not applied", src)
        else:
            df = size_filter(df, _sizes_of(sizes, p), size_factor)
    attrs = dict(df.attrs)
    names = label_names(vol) or (label_names(open_volume(p / "labels" / "classes"))
                                 if (p / "labels" / "classes").exists() and src != p / "labels" / "classes" else {})
    if names and "classes" not in attrs:
        attrs["classes"] = names  # a copick or STAR export names the objects
    df.insert(0, "tomo", tomo if tomo is not None else tomo_name(p))
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    return df


def _reference(p, src, level):
    """(scale, translation) of the grid object lists are given in: level 0 of the store's image
    (``p``), else level 0 of the map itself; None when neither is an NGFF multiscale group."""
    from ..io.omezarr import read_multiscale

    for cand in (p, src):
        if not (cand / ".zattrs").is_file() and not (cand / "zarr.json").is_file():
            continue
        try:
            arr, meta = read_multiscale(cand, 0, check=False)
        except TomochunkError:
            continue
        if meta.get("scale") is not None:
            return {**meta, "shape": tuple(int(n) for n, d in zip(arr.shape, meta["dims"]) if d in ("z", "y", "x"))}
    return None


def _to_level0(df, vol, ref):
    """Map picks from the grid of ``vol`` to level-0 voxels of ``ref`` (see :func:`pick_inputs`)."""
    if ref is None or not len(getattr(vol, "dims", ())):
        return df
    dims = [d for d in vol.dims if d in ("z", "y", "x")]
    rd = [d for d in ref["dims"] if d in ("z", "y", "x")]
    if dims != rd:
        return df
    rs = dict(zip(ref["dims"], ref["scale"]))
    rt = dict(zip(ref["dims"], ref.get("translation") or [0.0] * len(ref["dims"])))
    factor, shift = {}, {}
    for d in dims:
        c = np.asarray(vol.coords[d].values, float) if d in vol.coords else None
        if c is None or len(c) < 2 or not rs.get(d):
            return df
        factor[d] = (c[1] - c[0]) / rs[d]
        shift[d] = (c[0] - rt.get(d, 0.0)) / rs[d]
    if all(np.isclose(factor[d], 1.0) and np.isclose(shift[d], 0.0) for d in dims):
        return df
    attrs = dict(df.attrs)
    out = df.copy()
    for d in dims:
        if d in out.columns:
            out[d] = out[d].to_numpy(float) * factor[d] + shift[d]
    out.attrs = attrs
    vs = attrs.get("voxel_size")
    if vs:
        out.attrs["picked_voxel_size"] = float(vs)
        out.attrs["voxel_size"] = float(vs) / factor.get("x", factor[dims[-1]])
    if "shape" in attrs and len(ref["shape"]) == 3:
        out.attrs["shape"] = ref["shape"]
    return out


def _sizes_of(sizes, store):
    """``sizes`` of :func:`pick_inputs` as ``{class: stats}`` (or None)."""
    import json

    if isinstance(sizes, dict):
        return sizes.get("classes", sizes)
    if sizes == "auto":
        return model_sizes(store)
    p = Path(sizes)
    if not p.is_file():
        raise MissingError("no such size statistics file (train writes sizes.json beside the model)", p)
    try:
        return json.loads(p.read_text())["classes"]
    except (ValueError, KeyError) as exc:
        raise ValueProblem(f"unreadable size statistics ({exc})", p) from exc
