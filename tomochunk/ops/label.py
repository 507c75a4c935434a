"""Distributed connected components and per-object statistics.

``label`` labels every block with :func:`scipy.ndimage.label`, gives each
block a disjoint label range (``block_index * stride``), collects only the
label pairs that touch across block faces (edges and corners included for
connectivity 2 and 3), solves that small graph with
:func:`scipy.sparse.csgraph.connected_components` on the client, and relabels
every block with a per-block lookup table. Work and memory grow linearly with
the number of blocks, unlike dask-image's ``label`` whose single ``(n+1)²``
graph task grows with its square (see PITFALLS.md).

``regionprops`` reduces every block to one row per object present
(``np.bincount`` / ``ufunc.at``) and combines the rows with a pandas groupby;
it never builds ``label == i`` masks.
"""

from __future__ import annotations

import itertools
import operator

import numpy as np

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._arrays import as_dask, object_frame

log = get_logger(__name__)

__all__ = ["label", "regionprops"]


# --------------------------------------------------------------------------- structure

def _structure(ndim: int, structure=None, connectivity: int = 1) -> np.ndarray:
    from scipy import ndimage as ndi

    if structure is None:
        if not 1 <= int(connectivity) <= ndim:
            raise ValueProblem(f"connectivity must be between 1 and {ndim}, got {connectivity}")
        return ndi.generate_binary_structure(ndim, int(connectivity))
    s = np.asarray(structure).astype(bool)
    if s.shape != (3,) * ndim:
        raise ShapeError(f"structure must have shape {(3,) * ndim}, got {s.shape}")
    if not np.array_equal(s, s[(slice(None, None, -1),) * ndim]):
        raise ValueProblem("structure must be centro-symmetric (as scipy.ndimage.label requires)")
    return s


# --------------------------------------------------------------------------- block tasks

def _label_offset(block, structure, offset):
    """Label one block; shift labels into this block's private range."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(np.asarray(block) != 0, structure=structure)
    lab = lab.astype(np.int64, copy=False)
    if n:
        lab[lab > 0] += offset
    return lab


def _count(lab, offset):
    m = int(lab.max()) if lab.size else 0
    return m - offset if m > 0 else 0


def _face(lab, axis, high):
    idx = [slice(None)] * lab.ndim
    idx[axis] = -1 if high else 0
    return np.ascontiguousarray(lab[tuple(idx)])


def _pairs(face0, ring, shapes, deltas):
    """Label pairs between ``face0`` (high face of a block) and the next block's low face.

    ``ring`` maps a lateral position (-1, 0, 1 per remaining axis) to the low
    face of the block at that lateral offset (or None); they are assembled
    into a face one voxel wider on each side so diagonal neighbours that sit
    in edge/corner blocks are seen.
    """
    nd = face0.ndim
    ext_shape = tuple(s + 2 for s in face0.shape)
    ext = np.zeros(ext_shape, dtype=np.int64)
    for pos, f in ring.items():
        if f is None:
            continue
        sl = []
        for p, s in zip(pos, face0.shape):
            sl.append(slice(1, s + 1) if p == 0 else (slice(0, 1) if p < 0 else slice(s + 1, s + 2)))
        src = []
        for p, fs in zip(pos, f.shape):
            src.append(slice(None) if p == 0 else (slice(fs - 1, fs) if p < 0 else slice(0, 1)))
        ext[tuple(sl)] = f[tuple(src)]
    out = []
    a_nz = face0 > 0
    if not a_nz.any():
        return np.zeros((0, 2), np.int64)
    for d in deltas:
        sl = tuple(slice(1 + dd, 1 + dd + s) for dd, s in zip(d, face0.shape))
        b = ext[sl]
        m = a_nz & (b > 0)
        if m.any():
            out.append(np.stack([face0[m], b[m]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    p = np.concatenate(out)
    return np.unique(p, axis=0)


def _collect(pairs, counts):
    p = [x for x in pairs if len(x)]
    p = np.unique(np.concatenate(p), axis=0) if p else np.zeros((0, 2), np.int64)
    return p, np.asarray(counts, dtype=np.int64)


def _relabel(block, structure, table):
    from scipy import ndimage as ndi

    lab, _ = ndi.label(np.asarray(block) != 0, structure=structure)
    return table[lab]


# --------------------------------------------------------------------------- plan

class _Plan:
    """What pass 1 found: per-block lookup tables from local to global labels."""

    def __init__(self, mask, structure, tables, n):
        self.mask, self.structure, self.tables, self.n = mask, structure, tables, n
        self.dtype = np.int32 if n < 2**31 - 1 else np.int64

    def labels(self):
        import dask.array as da
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph

        mask = self.mask
        name = "tc-label-" + tokenize(mask.name, self.structure, self.n, [t.tobytes() for t in self.tables.values()])
        dsk = {(name,) + idx: (_relabel, (mask.name,) + idx, self.structure, self.tables[idx])
               for idx in self.tables}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[mask])
        return da.Array(graph, name, chunks=mask.chunks, dtype=self.dtype)


def _plan(mask, structure) -> _Plan:
    import dask
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nd = mask.ndim
    numblocks = mask.numblocks
    blocks = list(itertools.product(*[range(n) for n in numblocks]))
    stride = int(np.prod([max(c) for c in mask.chunks])) + 1
    tok = tokenize(mask.name, structure)
    lname, fname, pname, cname = (f"tc-{s}-{tok}" for s in ("lab1", "face", "pairs", "count"))
    dsk = {}
    lin = {idx: int(np.ravel_multi_index(idx, numblocks)) for idx in blocks}
    for idx in blocks:
        off = lin[idx] * stride
        dsk[(lname,) + idx] = (_label_offset, (mask.name,) + idx, structure, off)
        dsk[(cname,) + idx] = (_count, (lname,) + idx, off)
    # offsets (other-axes part) of structure elements that step +1 along an axis
    centre = np.argwhere(structure) - 1
    pair_keys = []
    for axis in range(nd):
        deltas = [tuple(np.delete(d, axis)) for d in centre if d[axis] == 1]
        lateral = list(itertools.product((-1, 0, 1), repeat=nd - 1))
        for idx in blocks:
            if idx[axis] + 1 >= numblocks[axis]:
                continue
            hi = (fname, axis, 1) + idx
            dsk[hi] = (_face, (lname,) + idx, axis, True)
            ring = {}
            for pos in lateral:
                other = [i for i in range(nd) if i != axis]
                nb = list(idx)
                nb[axis] += 1
                ok = True
                for p, ax in zip(pos, other):
                    nb[ax] += p
                    ok &= 0 <= nb[ax] < numblocks[ax]
                # corner/edge neighbours are only needed for diagonal structure elements
                needed = any(all(p == 0 or p == d for p, d in zip(pos, dl)) for dl in deltas)
                if not ok or not needed:
                    continue
                nb = tuple(nb)
                lo = (fname, axis, 0) + nb
                dsk.setdefault(lo, (_face, (lname,) + nb, axis, False))
                ring[pos] = lo
            key = (pname, axis) + idx
            dsk[key] = (_pairs, hi, (dict, [[pos, k] for pos, k in ring.items()]), None, deltas)
            pair_keys.append(key)
    final = "tc-collect-" + tok
    dsk[final] = (_collect, pair_keys, [(cname,) + idx for idx in blocks])
    graph = HighLevelGraph.from_collections(final, dsk, dependencies=[mask])
    pairs, counts = dask.compute(Delayed(final, graph))[0]

    cum = np.concatenate([[0], np.cumsum(counts)])
    total = int(cum[-1])
    if total and len(pairs):
        g = pairs.ravel()
        b, loc = np.divmod(g, stride)
        compact = (cum[b] + loc - 1).reshape(-1, 2)
        m = coo_matrix((np.ones(len(compact), np.int8), (compact[:, 0], compact[:, 1])), shape=(total, total))
        n, comp = connected_components(m, directed=False)
    else:
        n, comp = total, np.arange(total)
    dtype = np.int32 if n < 2**31 - 1 else np.int64
    comp = comp.astype(dtype) + 1
    tables = {}
    for idx in blocks:
        i = lin[idx]
        tables[idx] = np.concatenate([np.zeros(1, dtype), comp[cum[i]:cum[i + 1]]])
    log.info("label: %d blocks, %d block-local components, %d face pairs, %d objects",
             len(blocks), total, len(pairs), n)
    return _Plan(mask, structure, tables, int(n))


def label(mask, *, structure=None, connectivity: int = 1):
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

    Returns
    -------
    labels : dask.array.Array
        Lazy int32 (int64 beyond 2³¹ objects) labels with the chunks of ``mask``.
    n : int
        Number of objects.

    Notes
    -----
    The face graph is solved eagerly (it only holds labels that touch block
    faces). The returned array labels each block again when computed, so no
    block-labels are kept in memory between the two passes.

    Examples
    --------
    >>> import dask.array as da
    >>> m = da.zeros((64, 64, 64), bool, chunks=32)
    >>> labels, n = label(m > 0)
    >>> n
    0
    """
    m, _ = as_dask(mask, "mask")
    if m.ndim < 1:
        raise ShapeError("mask must have at least one dimension")
    s = _structure(m.ndim, structure, connectivity)
    plan = _plan(m, s)
    return plan.labels(), plan.n


# --------------------------------------------------------------------------- regionprops

def _block_stats(lab, inten, cls, origin):
    """Per-object partial statistics of one block as a dict of arrays."""
    lab = np.asarray(lab)
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return None
    lv = flat[nz].astype(np.int64)
    lo, hi = int(lv.min()), int(lv.max())
    if hi - lo <= 4 * nz.size + 4096:
        idx = lv - lo
        cnt = np.bincount(idx, minlength=hi - lo + 1)
        present = np.flatnonzero(cnt)
        remap = np.zeros(hi - lo + 1, np.int64)
        remap[present] = np.arange(present.size)
        idx = remap[idx]
        ids = present + lo
        cnt = cnt[present]
    else:
        ids, idx = np.unique(lv, return_inverse=True)
        cnt = np.bincount(idx)
    k = ids.size
    coords = np.unravel_index(nz, lab.shape)
    out = {"label": ids, "size": cnt}
    for ax, c in enumerate(coords):
        c = c.astype(np.int64)
        out[f"s{ax}"] = np.bincount(idx, weights=c, minlength=k) + cnt * origin[ax]
        mn = np.full(k, np.iinfo(np.int64).max)
        mx = np.full(k, -1, np.int64)
        np.minimum.at(mn, idx, c)
        np.maximum.at(mx, idx, c)
        out[f"min{ax}"] = mn + origin[ax]
        out[f"max{ax}"] = mx + origin[ax]
    if inten is not None:
        v = np.asarray(inten).ravel()[nz].astype(np.float64)
        out["isum"] = np.bincount(idx, weights=v, minlength=k)
        imax = np.full(k, -np.inf)
        np.maximum.at(imax, idx, v)
        out["imax"] = imax
    res = {"obj": out}
    if cls is not None:
        cv = np.asarray(cls).ravel()[nz].astype(np.int64)
        ncls = int(cv.max()) + 1 if cv.size else 1
        cc = np.bincount(idx * ncls + cv, minlength=k * ncls)
        nzc = np.flatnonzero(cc)
        res["cls"] = {"label": ids[nzc // ncls], "class": nzc % ncls, "count": cc[nzc]}
    return res


def _block_stats_task(lab, inten, cls, origin):
    return _block_stats(lab, inten, cls, origin)


def _combine_stats(parts, ndim, with_int, with_cls):
    import pandas as pd

    parts = [p for p in parts if p is not None]
    if not parts:
        return None, None
    obj = pd.concat([pd.DataFrame(p["obj"]) for p in parts], ignore_index=True)
    agg = {"size": "sum"}
    for ax in range(ndim):
        agg.update({f"s{ax}": "sum", f"min{ax}": "min", f"max{ax}": "max"})
    if with_int:
        agg.update({"isum": "sum", "imax": "max"})
    obj = obj.groupby("label", sort=True).agg(agg)
    cls = None
    if with_cls:
        c = pd.concat([pd.DataFrame(p["cls"]) for p in parts if "cls" in p], ignore_index=True)
        c = c.groupby(["label", "class"], sort=True)["count"].sum().reset_index()
        # majority class; ties go to the smaller class id; background (0) only wins if alone
        c_fg = c[c["class"] > 0]
        c_use = c_fg if len(c_fg) else c
        c_use = c_use.sort_values(["label", "count", "class"], ascending=[True, False, True])
        cls = c_use.drop_duplicates("label").set_index("label")["class"]
    return obj, cls


def _stats_tasks(lab, intensity, classes):
    """Delayed per-block statistics of ``lab`` (dask), aligned with optional maps."""
    import dask
    import dask.array as da

    arrays = [lab] + [a for a in (intensity, classes) if a is not None]
    if len(arrays) > 1:
        _, arrays = da.core.unify_chunks(*itertools.chain.from_iterable((a, tuple(range(a.ndim)))
                                                                        for a in arrays))
    lab = arrays[0]
    rest = list(arrays[1:])
    inten = rest.pop(0) if intensity is not None else None
    cls = rest.pop(0) if classes is not None else None
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in lab.chunks]
    ld = lab.to_delayed()
    idd = inten.to_delayed() if inten is not None else None
    cd = cls.to_delayed() if cls is not None else None
    tasks = []
    for idx in itertools.product(*[range(n) for n in lab.numblocks]):
        origin = tuple(int(s[i]) for s, i in zip(starts, idx))
        tasks.append(dask.delayed(_block_stats_task, pure=True)(
            ld[idx], None if idd is None else idd[idx], None if cd is None else cd[idx], origin))
    return tasks


def _stats_frame(obj, cls, ndim, voxel_size=None, with_int=False):
    import pandas as pd

    if obj is None:
        cols = {"class_label": [], "x": [], "y": [], "z": [], "size": [], "obj_id": []}
        df = object_frame(cols, voxel_size)
        if cls is None:
            df = df.drop(columns="class_label")
        return df
    n = obj["size"].to_numpy()
    cols = {}
    if cls is not None:
        cols["class_label"] = cls.reindex(obj.index).fillna(0).to_numpy().astype(np.int64)
    names = ["z", "y", "x"][-ndim:] if ndim <= 3 else [f"ax{i}" for i in range(ndim)]
    cent = {nm: obj[f"s{ax}"].to_numpy() / n for ax, nm in enumerate(names)}
    for nm in ("x", "y", "z"):
        if nm in cent:
            cols[nm] = cent[nm]
    cols["size"] = n
    cols["obj_id"] = obj.index.to_numpy()
    if with_int:
        cols["score_sum"] = obj["isum"].to_numpy()
        cols["score_max"] = obj["imax"].to_numpy()
        cols["score_mean"] = obj["isum"].to_numpy() / n
    for ax, nm in enumerate(names):
        cols[f"bbox_{nm}0"] = obj[f"min{ax}"].to_numpy()
    for ax, nm in enumerate(names):
        cols[f"bbox_{nm}1"] = obj[f"max{ax}"].to_numpy() + 1
    return object_frame(pd.DataFrame(cols), voxel_size)


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
    import dask

    lab, vs = as_dask(labels, "labels")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ShapeError(f"labels must be an integer array, got {lab.dtype}")
    inten = cls = None
    if intensity is not None:
        inten, vs2 = as_dask(intensity, "intensity")
        vs = vs or vs2
        if inten.shape != lab.shape:
            raise ShapeError(f"intensity shape {inten.shape} differs from labels shape {lab.shape}")
    if classes is not None:
        cls, _ = as_dask(classes, "classes")
        if cls.shape != lab.shape:
            raise ShapeError(f"classes shape {cls.shape} differs from labels shape {lab.shape}")
        if not np.issubdtype(cls.dtype, np.integer):
            raise ShapeError(f"classes must be an integer array, got {cls.dtype}")
    parts = dask.compute(*_stats_tasks(lab, inten, cls))
    obj, cl = _combine_stats(parts, lab.ndim, inten is not None, cls is not None)
    if cls is not None and cl is None:
        cl = __import__("pandas").Series(dtype=np.int64)
    return _stats_frame(obj, cl, lab.ndim, vs, inten is not None)
