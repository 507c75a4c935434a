"""The connected-components engine that ``label``, ``regionprops``, ``cluster`` and ``pick`` share.

A designated private module (as dask-image's ``ndmeasure/_utils/_label.py``): its
names are plain, and the ops import them by design.

Pass 1 labels every block (with ``cc3d``, or :func:`scipy.ndimage.label`) and gives
each block a disjoint label range (``block_index * stride``); only the label pairs
that touch across block faces (edges and corners included for connectivity 2 and
3) are collected, the small graph they form is solved with
:func:`scipy.sparse.csgraph.connected_components` on the client, and pass 2
relabels every block with a per-block lookup table. Work and memory grow linearly
with the number of blocks, unlike dask-image's ``label`` whose single ``(n+1)²``
graph task grows with its square.

Statistics reduce every block to one row per object present (``np.bincount`` /
``ufunc.at``) and combine the rows with a pandas groupby; no ``label == i`` mask
is ever built.

When the whole map is one block (a numpy array, or a dask array of one chunk)
there is nothing to stitch: :func:`plan` and :func:`block_parts` then run the same
block functions directly with numpy, without a task graph or a scheduler, and
give the same labels and statistics as the blocked path.
"""

from __future__ import annotations

import itertools
import uuid

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._blocks import chunk_starts
from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ..parallel import worker_info
from ._arrays import as_dask, object_frame

try:
    import cc3d as _CC3D
except ImportError:  # optional speed-up; scipy labels the blocks without it
    _CC3D = None

log = get_logger(__name__)

#: Run one-block maps directly with numpy. Only tests turn it off, to compare with the blocked path.
FAST_PATH = True


def one_block(*arrays) -> bool:
    """True when every given array (None skipped) is numpy or a one-block dask array, and the fast path is on.

    Examples
    --------
    >>> one_block(da.zeros((4, 4), chunks=4), None), one_block(da.zeros((4, 4), chunks=2))
    (True, False)
    """
    return FAST_PATH and all(a is None or isinstance(a, np.ndarray) or all(n == 1 for n in a.numblocks)
                             for a in arrays)


def as_input(arr, name: str = "array"):
    """``(array, voxel_size or None)``: a numpy array that is one block stays numpy (the fast path
    skips wrapping and hashing it for dask); everything else is :func:`~tomochunk.ops._arrays.as_dask`.

    Examples
    --------
    >>> type(as_input(np.zeros((4, 4)))[0]).__name__, type(as_input(da.zeros((4, 4)))[0]).__name__
    ('ndarray', 'Array')
    """
    if FAST_PATH and isinstance(arr, np.ndarray) and arr.ndim and all(
            len(c) == 1 for c in da.core.normalize_chunks("auto", arr.shape, dtype=arr.dtype)):
        return arr, None
    return as_dask(arr, name)


def as_blocked(*arrays):
    """The arrays as dask arrays (numpy ones wrapped with dask's automatic chunks), None kept."""
    return [a if a is None or isinstance(a, da.Array) else as_dask(a)[0] for a in arrays]


def in_memory(a):
    """The numpy array of a one-block dask array (numpy and None pass through), computed in this process.

    Examples
    --------
    >>> in_memory(da.ones(3, chunks=3)).tolist()
    [1.0, 1.0, 1.0]
    """
    if a is None or isinstance(a, np.ndarray):
        return a
    return np.asarray(a.compute(scheduler="synchronous"))


# --------------------------------------------------------------------------- structure

def structure(ndim: int, structure=None, connectivity: int = 1) -> np.ndarray:
    """The boolean structuring element of ``connectivity`` (or the given one, checked).

    Examples
    --------
    >>> int(structure(3, connectivity=1).sum()), int(structure(3, connectivity=3).sum())
    (7, 27)
    """
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

def cc3d_connectivity(structure):
    """cc3d's name for ``structure`` (6/18/26 in 3D, 4/8 in 2D), or None where only scipy has it."""
    nd = structure.ndim
    if nd not in (2, 3):
        return None
    for c, name in zip(range(1, nd + 1), ((4, 8), (6, 18, 26))[nd - 2]):
        if np.array_equal(structure, ndi.generate_binary_structure(nd, c)):
            return name
    return None


def label_local(block, structure):
    """Label one block (int32 local labels 1..n_b).

    ``cc3d`` (connected-components-3d) labels 2.3x faster than scipy on our masks and
    gives the same components; scipy serves the other structures and dimensions.

    Examples
    --------
    >>> label_local(np.array([1, 1, 0, 1]), structure(1)).tolist()
    [1, 1, 0, 2]
    """
    block = np.asarray(block)
    fg = block if block.dtype == bool else block != 0
    conn = cc3d_connectivity(structure) if fg.size < 2**31 else None
    if conn is not None and _CC3D is not None:
        lab = _CC3D.connected_components(fg, connectivity=conn, out_dtype=np.uint32)
        return lab.view(np.int32)  # fewer labels than voxels, so below 2**31: same values
    lab, _ = ndi.label(fg, structure=structure, output=np.int32)
    return lab


def count(lab):
    return int(lab.max()) if lab.size else 0


def face(lab, axis, high, offset):
    """One boundary slice of a block, shifted into the block's private label range."""
    idx = [slice(None)] * lab.ndim
    idx[axis] = -1 if high else 0
    f = np.array(lab[tuple(idx)], dtype=np.int64)
    f[f > 0] += offset
    return f


def pairs(face0, ring, shapes, deltas):
    """Label pairs between ``face0`` (high face of a block) and the next block's low face.

    ``ring`` maps a lateral position (-1, 0, 1 per remaining axis) to the low
    face of the block at that lateral offset (or None); they are assembled
    into a face one voxel wider on each side so diagonal neighbours that sit
    in edge/corner blocks are seen.
    """
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
    return unique_pairs(np.concatenate(out))


def unique_pairs(p):
    """Distinct rows of an ``(n, 2)`` integer array, sorted; a lexsort is ~3x faster
    than ``np.unique(axis=0)`` and, unlike packing a pair into one int64, works for any label range.

    Examples
    --------
    >>> unique_pairs(np.array([[2, 1], [1, 3], [2, 1]])).tolist()
    [[1, 3], [2, 1]]
    """
    if len(p) < 2:
        return p
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(p[1:] != p[:-1], axis=1)
    return p[keep]


def collect(pair_list, counts):
    p = [x for x in pair_list if len(x)]
    p = unique_pairs(np.concatenate(p)) if p else np.zeros((0, 2), np.int64)
    return p, np.asarray(counts, dtype=np.int64)


def relabel(block, structure, table):
    """Global labels of one block: label it again and look the local labels up in ``table``."""
    return lookup(label_local(block, structure), table)


def lookup(lab, table):
    return table[lab]


# --------------------------------------------------------------------------- plan

class Plan:
    """What pass 1 found: per-block lookup tables from local to global labels.

    ``local`` holds the persisted block-local labels when they were kept in
    worker memory (then pass 2 is a lookup), else None (pass 2 labels again).
    ``array`` holds the labels themselves (numpy) when the map was one block.
    """

    def __init__(self, mask, structure, tables, n, local=None, array=None):
        self.mask, self.structure, self.tables, self.n, self.local = mask, structure, tables, n, local
        self.array = array
        self.dtype = np.int32 if n < 2**31 - 1 else np.int64

    def labels(self):
        """The global labels as a lazy dask array with the chunks of the mask."""
        if self.array is not None:  # one task holding the labels: from_array would copy them
            name = "tc-label-" + uuid.uuid4().hex
            key = (name,) + (0,) * self.array.ndim
            graph = HighLevelGraph.from_collections(name, {key: self.array}, dependencies=())
            return da.Array(graph, name, chunks=tuple((s,) for s in self.array.shape), dtype=self.array.dtype)
        src = self.local if self.local is not None else self.mask
        name = "tc-label-" + tokenize(src.name, self.structure, self.n,
                                       [t.tobytes() for t in self.tables.values()])
        if self.local is not None:
            dsk = {(name,) + idx: (lookup, (src.name,) + idx, self.tables[idx]) for idx in self.tables}
        else:
            dsk = {(name,) + idx: (relabel, (src.name,) + idx, self.structure, self.tables[idx])
                   for idx in self.tables}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[src])
        return da.Array(graph, name, chunks=src.chunks, dtype=self.dtype)


def auto_persist(mask) -> bool:
    """Keep block labels on the workers when they take under a quarter of their memory."""
    mem = sum(w.get("memory_limit", 0) or 0 for w in worker_info().values())
    return mem > 0 and mask.size * 4 < 0.25 * mem


def plan(mask, structure, persist=False) -> Plan:
    """Pass 1 over a mask: the per-block tables from local to global labels.

    ``mask`` is a dask array, or a numpy array (then it must be one block: the fast path).

    Examples
    --------
    >>> m = da.from_array(np.array([1, 1, 0, 1, 1, 0, 0, 1]), chunks=2)
    >>> p = plan(m, structure(1))
    >>> p.n, p.labels().compute().tolist()
    (3, [1, 1, 0, 2, 2, 0, 0, 3])
    """
    if one_block(mask):
        lab = label_local(in_memory(mask), structure)
        n = count(lab)
        idx = (0,) * mask.ndim
        table = np.arange(n + 1, dtype=np.int32 if n < 2**31 - 1 else np.int64)
        log.info("label: 1 block, %d objects (in memory)", n)
        return Plan(mask, structure, {idx: table}, n, array=lab)
    nd = mask.ndim
    numblocks = mask.numblocks
    blocks = list(itertools.product(*[range(n) for n in numblocks]))
    stride = int(np.prod([max(c) for c in mask.chunks])) + 1
    if persist is None:
        persist = auto_persist(mask)
    local = mask.map_blocks(label_local, structure, dtype=np.int32)
    if persist:
        local = local.persist()
    tok = tokenize(local.name, structure)
    lname = local.name
    fname, pname, cname = (f"tc-{s}-{tok}" for s in ("face", "pairs", "count"))
    dsk = {}
    lin = {idx: int(np.ravel_multi_index(idx, numblocks)) for idx in blocks}
    for idx in blocks:
        dsk[(cname,) + idx] = (count, (lname,) + idx)
    # offsets (other-axes part) of structure elements that step +1 along an axis
    centre = np.argwhere(structure) - 1
    pair_keys = []
    for axis in range(nd):
        deltas = [tuple(np.delete(d, axis)) for d in centre if d[axis] == 1]
        lateral = list(itertools.product((-1, 0, 1), repeat=nd - 1))
        other = [i for i in range(nd) if i != axis]
        for idx in blocks:
            if idx[axis] + 1 >= numblocks[axis]:
                continue
            hi = (fname, axis, 1) + idx
            dsk[hi] = (face, (lname,) + idx, axis, True, lin[idx] * stride)
            ring = {}
            for pos in lateral:
                nb = list(idx)
                nb[axis] += 1
                ok = True
                for p, ax in zip(pos, other):
                    nb[ax] += p
                    ok &= 0 <= nb[ax] < numblocks[ax]
                # edge/corner neighbours only matter for diagonal structure elements
                needed = any(all(p == 0 or p == d for p, d in zip(pos, dl)) for dl in deltas)
                if not ok or not needed:
                    continue
                nb = tuple(nb)
                lo = (fname, axis, 0) + nb
                dsk.setdefault(lo, (face, (lname,) + nb, axis, False, lin[nb] * stride))
                ring[pos] = lo
            key = (pname, axis) + idx
            dsk[key] = (pairs, hi, (dict, [[pos, k] for pos, k in ring.items()]), None, deltas)
            pair_keys.append(key)
    final = "tc-collect-" + tok
    dsk[final] = (collect, pair_keys, [(cname,) + idx for idx in blocks])
    graph = HighLevelGraph.from_collections(final, dsk, dependencies=[local])
    found, counts = dask.compute(Delayed(final, graph))[0]

    cum = np.concatenate([[0], np.cumsum(counts)])  # label offsets per block (not chunk offsets)
    total = int(cum[-1])
    if total and len(found):
        g = found.ravel()
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
    log.info("label: %d blocks, %d block-local components, %d face pairs, %d objects%s",
             len(blocks), total, len(found), n, " (block labels kept on workers)" if persist else "")
    return Plan(mask, structure, tables, int(n), local if persist else None)


# --------------------------------------------------------------------------- statistics

def block_stats(lab, inten, cls, origin):
    """Per-object partial statistics of one block as a dict of arrays.

    Examples
    --------
    >>> s = block_stats(np.array([0, 2, 2, 0]), None, None, (10,))
    >>> s["obj"]["label"].tolist(), s["obj"]["size"].tolist(), s["obj"]["s0"].tolist()
    ([2], [2], [23.0])
    """
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
    boxes = None
    if lo > 0 and hi <= 4 * nz.size + 4096 and lab.dtype.kind in "iu":
        # one C pass gives every bounding box; ufunc.at per axis is ~10x slower
        found = ndi.find_objects(lab, max_label=hi)
        boxes = [found[i - 1] for i in ids.tolist()]
    for ax, c in enumerate(coords):
        out[f"s{ax}"] = np.bincount(idx, weights=c, minlength=k) + cnt * origin[ax]
        if boxes is not None:
            mn = np.fromiter((b[ax].start for b in boxes), np.int64, k)
            mx = np.fromiter((b[ax].stop - 1 for b in boxes), np.int64, k)
        else:
            c = c.astype(np.int64)
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


def combine_stats(parts, ndim, with_int, with_cls):
    """Combine the per-block rows of :func:`block_stats`: ``(objects, majority class)`` frames."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None, None
    obj = pd.concat([pd.DataFrame(p["obj"]) for p in parts], ignore_index=True)
    agg = {"size": "sum"}
    for ax in range(ndim):
        agg.update({f"s{ax}": "sum", f"min{ax}": "min", f"max{ax}": "max"})
    if with_int:
        agg.update({"isum": "sum", "imax": "max"})
    if len(parts) == 1:  # one block: every label is one row already
        obj = obj.set_index("label")[list(agg)]
    else:
        obj = obj.groupby("label", sort=True).agg(agg)
    cls = None
    if with_cls:
        c = pd.concat([pd.DataFrame(p["cls"]) for p in parts if "cls" in p], ignore_index=True)
        if len(parts) > 1:
            c = c.groupby(["label", "class"], sort=True)["count"].sum().reset_index()
        # majority class; ties go to the smaller class id; background (0) only wins if alone
        c_fg = c[c["class"] > 0]
        c_use = c_fg if len(c_fg) else c
        c_use = c_use.sort_values(["label", "count", "class"], ascending=[True, False, True], kind="stable")
        cls = c_use.drop_duplicates("label").set_index("label")["class"]
    return obj, cls


def stats_tasks(lab, intensity, classes):
    """Delayed per-block statistics of ``lab`` (dask), aligned with optional maps."""
    arrays = [lab] + [a for a in (intensity, classes) if a is not None]
    if len(arrays) > 1:
        _, arrays = da.core.unify_chunks(*itertools.chain.from_iterable((a, tuple(range(a.ndim)))
                                                                        for a in arrays))
    lab = arrays[0]
    rest = list(arrays[1:])
    inten = rest.pop(0) if intensity is not None else None
    cls = rest.pop(0) if classes is not None else None
    starts = chunk_starts(lab.chunks)
    ld = lab.to_delayed()
    idd = inten.to_delayed() if inten is not None else None
    cd = cls.to_delayed() if cls is not None else None
    tasks = []
    for idx in itertools.product(*[range(n) for n in lab.numblocks]):
        origin = tuple(int(s[i]) for s, i in zip(starts, idx))
        tasks.append(dask.delayed(block_stats, pure=True)(
            ld[idx], None if idd is None else idd[idx], None if cd is None else cd[idx], origin))
    return tasks


def block_parts(lab, intensity=None, classes=None):
    """Per-block statistics of ``lab``, computed directly with numpy when every map is one block.

    The maps are dask arrays, or numpy arrays on the fast path.
    """
    if one_block(lab, intensity, classes):
        return [block_stats(in_memory(lab), in_memory(intensity), in_memory(classes), (0,) * lab.ndim)]
    return list(dask.compute(*stats_tasks(lab, intensity, classes)))


def stats_frame(obj, cls, ndim, voxel_size=None, with_int=False):
    """The object frame of :func:`combine_stats`' output (centroids, size, ids, scores, bounding boxes)."""
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
