"""OME-Zarr (NGFF 0.4 on Zarr 2 by default, 0.5 on Zarr 3 on request) multiscale stores.

Layout of a store written here::

    tomo.zarr/            group: multiscales metadata, source header, "tomochunk" record
      0/ 1/ 2/            levels 1x, 2x, 4x (time and channel axes are not downsampled)
      labels/<name>/      NGFF label images (segmentation output), same multiscale layout

There is one writer for images and labels: :func:`open_output` creates a group
(or resumes it), :class:`PyramidWriter` streams a pyramid into it chunk by
chunk, and :func:`write_regions` writes regions from Dask workers (which then record
them in the group's :class:`Progress`).

One resume mechanism: each finished chunk (or region) leaves a marker file in
``<group>/.tomochunk_progress/``, written after its data and renamed into place,
so a chunk is either recorded and whole, or rewritten. A resume is allowed
only when the group's record of its source identity (path, size, mtime and a
sampled checksum) and writer parameters matches the new run.

A store is complete only when ``attrs["tomochunk"]["complete"]`` is true; that
attribute is written last, together with the number of chunk files written per
array. Readers refuse incomplete stores, stores whose chunk files went missing
(a missing chunk would read as zeros), and name the store and chunk when a
chunk cannot be decoded.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from .._log import get_logger
from ..errors import ExistsError, FormatError, MissingError, ShapeError
from ._identity import check_alias, graph_paths, source_identity
from ._ngff_meta import (TYPES, VERSIONS, default_chunks, default_compressor, factors_for, group_attrs, jsonable,
                         labels_attrs, level_shapes, level_transform, multiscales_metadata)
from ._pyramid import _downsample, _write_direct, block_stats, stats_and_downsample
from ._source import aligned_empty
from ._store import (_EMPTY_TOO, PROGRESS_FILE, Progress, _chunk_key, _cleanup_tmp, _open, _record, _zarr_meta,
                     check_chunks, check_complete, is_complete, mark_complete, ome_attrs, open_for_write,
                     store_version)

log = get_logger(__name__)

__all__ = ["PyramidWriter", "open_output", "write_regions", "read_multiscale", "is_complete", "check_complete",
           "label_names", "mark_complete", "store_version", "default_chunks", "default_compressor", "factors_for",
           "level_shapes", "multiscales_metadata", "group_attrs", "labels_attrs", "jsonable", "Progress",
           "source_identity", "graph_paths", "check_alias", "check_chunks", "VERSIONS", "PROGRESS_FILE"]

# --- reading -------------------------------------------------------------------

class _Checked:
    """A Zarr array whose read errors name the store and the chunk (a dask ``from_array`` source)."""

    def __init__(self, arr, store):
        self.arr, self.store = arr, str(store)
        self.shape, self.dtype, self.ndim, self.chunks = arr.shape, arr.dtype, arr.ndim, arr.chunks

    def __getitem__(self, key):
        try:
            return self.arr[key]
        except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
            raise FormatError(f"corrupted chunk {self._which(key)} ({type(exc).__name__}: {exc})",
                              self.store) from None

    def _which(self, key):
        key = key if isinstance(key, tuple) else (key,)
        ranges = []
        for k, n, c in zip(key + (slice(None),) * (self.ndim - len(key)), self.shape, self.chunks):
            lo, hi, _ = k.indices(n) if isinstance(k, slice) else (int(k), int(k) + 1, 1)
            ranges.append(range(lo // c, max(lo // c + 1, math.ceil(hi / c))))
        for idx in product(*ranges):
            try:
                self.arr[tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, self.chunks))]
            except Exception:  # noqa: BLE001
                return f"{self.arr.path}/{_chunk_key(self.arr, idx)}"
        return f"in {self.arr.path}"


def _dask(arr, store):
    """Lazy dask view of a Zarr array, named from the store path and its metadata's mtime (a fresh
    name for every rewrite of the store)."""
    meta = _zarr_meta(Path(store) / arr.path) if arr.path else _zarr_meta(Path(store))
    stamp = meta.stat().st_mtime_ns if meta is not None else 0
    name = "from-zarr-" + tokenize(str(Path(store).resolve()), arr.path, stamp, arr.shape, str(arr.dtype),
                                   arr.chunks)
    return da.from_array(_Checked(arr, store), chunks=arr.chunks, name=name, asarray=False, lock=False,
                         meta=np.empty((0,) * arr.ndim, arr.dtype))


def read_multiscale(path, level=0, *, check=True):
    """Open one level of an OME-Zarr multiscale group, or a plain Zarr array.

    Axis names are matched to ``c, t, z, y, x`` whatever their case and order
    (``X``, ``x, y, z``, ``tczyx``), and the array is transposed lazily to that
    order, so ``dims`` is always ``(z, y, x)``, ``(t, y, x)``, ``(c, z, y, x)`` or
    similar; time and channel axes of length 1 are dropped. Unknown axis names
    are refused.

    Returns
    -------
    array : dask.array.Array
    meta : dict
        ``dims``, ``voxel_size`` (Å, of that level), ``scale`` and ``translation`` (per axis,
        aligned with ``dims``, in Å for space), ``origin`` (the level's spatial translation,
        ``z, y, x`` Å, where the store has one; also in ``attrs["origin"]``), ``attrs`` (group
        attributes).

    Examples
    --------
    >>> import tempfile, zarr
    >>> p = Path(tempfile.mkdtemp()) / "a.zarr"
    >>> a = zarr.create_array(str(p), shape=(4, 3, 2), dtype="f4", dimension_names=("x", "y", "z"))
    >>> arr, meta = read_multiscale(p, check=False)
    >>> arr.shape, meta["dims"]
    ((2, 3, 4), ('z', 'y', 'x'))
    """
    path = Path(path)
    if not path.exists():
        raise MissingError("no such Zarr store", path)
    node = _open(path)
    if check:
        check_complete(path)
    if isinstance(node, zarr.Array):
        dims = node.metadata.dimension_names if getattr(node.metadata, "dimension_names", None) else None
        attrs = node.attrs.asdict()
        dims = tuple(dims or attrs.get("_ARRAY_DIMENSIONS") or _dims_for(node.ndim, path))
        vs = float(attrs.get("voxel_size", 1.0))
        arr, dims, _ = _canonical_axes(_dask(node, path), dims, path)
        return arr, {"dims": dims, "voxel_size": vs, "attrs": attrs}
    ome, version = ome_attrs(node)
    ms = ome.get("multiscales")
    if not ms:
        arrays = sorted(k for k, _ in node.arrays())
        if len(arrays) == 1:
            return read_multiscale(path / arrays[0], level, check=False)
        raise FormatError("Zarr group has no 'multiscales' metadata and no single array", path)
    ms = ms[0]
    datasets = ms["datasets"]
    if not 0 <= level < len(datasets):
        raise FormatError(f"level {level} requested, the store has {len(datasets)} levels", path)
    ds = datasets[level]
    dims = tuple(a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])) or None
    arr = node[ds["path"]]
    dims = dims or _dims_for(arr.ndim, path)
    if len(dims) != arr.ndim:
        raise FormatError(f"multiscales axes {list(dims)} do not match the {arr.ndim}D array "
                          f"{ds['path']!r}", path)
    scale, translation = (np.asarray(v, float) for v in level_transform(ms, level, arr.ndim))
    data, dims_out, perm = _canonical_axes(_dask(arr, path), dims, path)
    names = [str(dims[p]).lower() for p in perm]
    scale, translation = scale[list(perm)], translation[list(perm)]
    unit = {str(a.get("name", "")).lower(): a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
    factor = {d: _ANGSTROM_PER.get(str(unit.get(d) or "angstrom").lower(), 1.0) for d in "zyx"}
    space = {d: float(s) * factor[d] for d, s in zip(names, scale) if d in "zyx"}
    vs = space.get("x", next(iter(space.values()), 1.0))
    # per-axis scale and translation of this level, aligned with ``dims``, spatial axes in Å
    meta = {"dims": dims_out, "voxel_size": vs, "levels": len(datasets),
            "scale": [float(s) * factor.get(d, 1.0) for d, s in zip(names, scale)],
            "translation": [float(t) * factor.get(d, 1.0) for d, t in zip(names, translation)]}
    shift = {d: float(t) * factor[d] for d, t in zip(names, translation) if d in "zyx"}
    attrs = node.attrs.asdict()
    ome = attrs.pop("ome", None)
    if isinstance(ome, dict) and "image-label" in ome:  # NGFF 0.5 keeps it under "ome": check_tomogram looks
        attrs["image-label"] = ome["image-label"]
    attrs.pop("multiscales", None)
    attrs["ngff_version"] = version
    if any(shift.values()):
        meta["origin"] = tuple(shift.get(d, 0.0) for d in "zyx" if d in shift)
        attrs["origin"] = list(meta["origin"])
    meta["attrs"] = attrs
    return data, meta


#: NGFF spatial units -> Å (voxel sizes and translations are kept in Å)
_ANGSTROM_PER = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7, "meter": 1e10,
                 "picometer": 0.01}
#: tomochunk's axis order: the class/channel axis leads (score maps are ``c, z, y, x`` or
#: ``c, t, y, x``), then time, then space
AXIS_ORDER = "ctzyx"


def label_names(vol) -> dict:
    """``{label: name}`` from a label image's NGFF ``image-label`` ``properties`` (``{}`` without them).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> lab = xr.DataArray(np.zeros((2, 2, 2), np.uint8), dims=("z", "y", "x"),
    ...                    attrs={"image-label": {"properties": [{"label-value": 1, "class": "ribosome"}]}})
    >>> label_names(lab)
    {1: 'ribosome'}
    """
    props = ((getattr(vol, "attrs", None) or {}).get("image-label") or {}).get("properties") or []
    out = {}
    for item in props:
        if isinstance(item, dict) and "label-value" in item and item.get("class") is not None:
            try:
                out[int(item["label-value"])] = str(item["class"])
            except (TypeError, ValueError):
                continue
    return out


def _canonical_axes(arr, dims, path):
    """``(array, dims, perm)`` with the axes renamed to lower case, put in ``c, t, z, y, x`` order
    (lazily) and length-1 ``t``/``c`` axes dropped; ``perm`` lists the kept source axes."""
    names = [str(d).lower() for d in dims]
    if len(names) != arr.ndim:
        raise FormatError(f"axes {list(dims)} do not match the {arr.ndim}D array", path)
    unknown = [d for d in names if d not in AXIS_ORDER]
    if unknown or len(set(names)) != len(names):
        raise FormatError(f"axes {list(dims)} are not distinct names among t, c, z, y, x", path)
    perm = sorted(range(len(names)), key=lambda i: AXIS_ORDER.index(names[i]))
    if perm != list(range(len(names))):
        log.info("%s: axes %s read as %s", path, list(dims), [names[i] for i in perm])
        arr = arr.transpose(perm)
    keep = [k for k, i in enumerate(perm) if not (names[i] in "tc" and arr.shape[k] == 1 and arr.ndim > 3)]
    if len(keep) != arr.ndim:
        arr = arr[tuple(slice(None) if k in keep else 0 for k in range(arr.ndim))]
    perm = [perm[k] for k in keep]
    return arr, tuple(names[i] for i in perm), perm


def _dims_for(ndim, path):
    if ndim == 3:
        return ("z", "y", "x")
    if ndim == 4:
        return ("c", "z", "y", "x")
    raise ShapeError(f"expected a 3D volume or a 4D [c,z,y,x] map, got {ndim}D", path)


# --- creating or resuming a group ------------------------------------------------

@dataclass
class Output:
    """An output group opened by :func:`open_output`."""

    path: Path
    group: object
    arrays: list
    progress: Progress
    complete: bool = False
    record: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _source_paths(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("path"), str):
            yield obj["path"]
        for v in obj.values():
            if isinstance(v, (dict, list)):
                yield from _source_paths(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _source_paths(v)


def _differences(old, new) -> str:
    """How an existing record differs from the new one, in words."""
    what = [k for k in ("layout", "source", "params") if old.get(k) != new.get(k)]
    if "source" in what:
        olds, news = list(_source_paths(old.get("source"))), list(_source_paths(new.get("source")))
        if olds:
            changed = " as they were then (changed since: size, mtime or content)" if olds == news else ""
            return f"from {', '.join(olds)}{changed}"
    return "with other " + " and ".join("writer parameters" if w == "params" else w for w in what)


def open_output(path, arrays, *, attrs, layout, source=None, params=None, overwrite=False, ngff="0.4",
                compressor=None, inputs=(), note=None) -> Output:
    """Create the group ``path`` with ``arrays``, or reopen it to resume or reuse it.

    Parameters
    ----------
    arrays : list of (name, shape, chunks, dtype, dims)
    attrs : dict
        Group attributes (NGFF metadata and user attributes); the ``tomochunk`` record is added.
    layout, source, params : dict
        What the group must match to be resumed: its array layout, the identity of its source
        (:func:`tomochunk.io._identity.source_identity`) and the writer's parameters.
    overwrite : bool
        Remove an existing group first (never an input: see ``inputs``).
    inputs : sequence of paths or dask collections
        What the output is computed from: an output that is, holds or lies inside one of them is
        refused before anything is deleted.
    compressor : numcodecs codec, False or None
        ``False`` stores raw chunks; ``None`` the default codec for the dtype.
    note : dict, optional
        More entries for the ``tomochunk`` record that do not key the resume (e.g. the voxel size).

    Returns
    -------
    Output
        ``complete`` is True when an identical, complete group exists (nothing to write).
    """
    path = Path(path)
    check_alias(path, inputs)
    new = jsonable({"layout": layout, "source": source, "params": params})
    if path.exists() and not overwrite:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            rec = _record(path)
            if rec is None:
                raise ExistsError("output exists (a store not written by tomochunk); pass overwrite=True "
                                  "(--overwrite) to replace it", path)
            same = all(rec.get(k) == v for k, v in new.items())
            if rec.get("complete"):
                if same and source is not None:
                    return Output(path, None, [], Progress(path), complete=True, record=rec)
                why = "" if same else f" (written {_differences(rec, new)})"
                raise ExistsError(f"output exists{why}; pass overwrite=True (--overwrite) to replace it", path)
            if not same:
                raise ExistsError(f"an incomplete store written {_differences(rec, new)} exists; pass "
                                  "overwrite=True (--overwrite) to start afresh", path)
    elif path.exists():
        if path.is_file() or (any(path.iterdir()) and _zarr_meta(path) is None):
            raise ExistsError("output exists and is not a Zarr store; remove it or choose another output", path)
        _remove(path)
    resume = path.exists()
    zarr_format = 3 if str(ngff) == "0.5" else 2
    if resume and store_version(path) != str(ngff):
        raise ExistsError(f"an incomplete NGFF {store_version(path)} store exists, NGFF {ngff} was asked; "
                          "pass overwrite=True (--overwrite) to start afresh", path)
    rec = {"complete": False, **new, **(note or {})}
    if not resume:
        # built aside and renamed into place: a kill while the group is created must not leave a
        # group without its record, which would read as a foreign (complete) store and be skipped
        tmp = path.with_name(f".{path.name}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format,
                        attributes=jsonable({**attrs, "tomochunk": rec}))
        os.rename(tmp, path)
    g = zarr.open_group(str(path), mode="r+", zarr_format=zarr_format)
    out = []
    for name, shape, chunks, dtype, dims in arrays:
        if resume and name in g:
            out.append(open_for_write(path / name))
            continue
        comp = None if compressor is False else (compressor or default_compressor(dtype, zarr_format))
        kw = dict(shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype), fill_value=0, overwrite=True,
                  compressors=comp, config=_EMPTY_TOO)
        if zarr_format == 2:
            kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kw["dimension_names"] = tuple(dims)
        out.append(g.create_array(name, **kw))
    g.attrs.update(jsonable({**attrs, "tomochunk": rec}))
    progress = Progress(path)
    done = progress.done() if resume else {}
    if resume:
        _cleanup_tmp(path)
        log.info("resuming %s: %d chunks already written", path, len(done))
    return Output(path, g, out, progress, record=rec, done=done)


def write_regions(root, writes) -> None:
    """Write ``(array path, region, data)`` items under the group ``root`` (for writers running on
    Dask workers: each owns whole storage chunks)."""
    root = Path(root)
    for name, region, data in writes:
        open_for_write(root / name)[tuple(region)] = data


# --- streaming a pyramid ---------------------------------------------------------

class PyramidWriter:
    """Stream an array into an OME-Zarr multiscale store, chunk by chunk.

    Level ``k`` chunks are built from the downsampled level ``k-1`` chunks they
    cover, depth first, so memory holds about one chunk per level plus the
    chunks in flight; every writer owns whole storage chunks. ``source`` and
    ``params`` key the resume (see :func:`open_output`); when an identical
    complete store exists, ``complete`` is True and :meth:`write` returns its
    recorded statistics without writing.

    Examples
    --------
    >>> import tempfile
    >>> w = PyramidWriter(Path(tempfile.mkdtemp()) / "t.zarr", (4, 4, 4), "uint8", dims="zyx", levels=2)
    >>> w.write(lambda region: np.ones([s.stop - s.start for s in region], np.uint8))["mean"]
    1.0
    >>> w.finish()
    """

    def __init__(self, path, shape, dtype, *, dims, voxel_size=1.0, levels=3, chunks=None, label=False,
                 attrs=None, ngff="0.4", compressor=None, threads=None, overwrite=False, name="", source=None,
                 params=None, inputs=(), origin=None, classes=None):
        self.path = Path(path)
        self.dims, self.shape, self.dtype = tuple(dims), tuple(int(s) for s in shape), np.dtype(dtype)
        self.levels = max(1, int(levels))
        self.factors = factors_for(self.dims)
        chunks = chunks or default_chunks(self.shape, self.dims)
        if isinstance(chunks, int):
            chunks = tuple(min(chunks, s) if d != "c" else 1 for d, s in zip(self.dims, self.shape))
        # chunk edges must stay aligned across levels, so spatial chunks are even
        self.chunks = tuple(max(1, int(c) + (int(c) % f if int(c) < s else 0))
                            for c, f, s in zip(chunks, self.factors, self.shape))
        self.label = label
        self.shapes = level_shapes(self.shape, self.dims, self.levels)
        ngff = str(ngff)
        self.threads = threads or (os.cpu_count() or 1) + 2  # two more: raw chunks block in O_DIRECT writes
        self.stats = {"n": 0, "sum": 0.0, "sumsq": 0.0, "min": math.inf, "max": -math.inf, "nonfinite": 0}
        self._lock = threading.Lock()

        layout = {"shape": list(self.shape), "dtype": self.dtype.str, "chunks": list(self.chunks),
                  "levels": self.levels, "dims": list(self.dims)}
        ms = multiscales_metadata(self.dims, voxel_size, self.levels, name=name, label=label, origin=origin,
                                  version=ngff)
        meta = group_attrs(ms, ngff, label=label, classes=classes, extra=dict(attrs or {}))
        specs = [(str(k), shp, self.chunks, self.dtype, self.dims) for k, shp in enumerate(self.shapes)]
        out = open_output(self.path, specs, attrs=meta, layout=layout, source=source, params=params,
                          overwrite=overwrite, ngff=ngff, compressor=compressor, inputs=inputs,
                          note={"voxel_size": float(voxel_size)})
        self.out, self.complete, self.record = out, out.complete, out.record
        self.arrays, self.group = out.arrays, out.group
        self.done = set()
        for key, payload in out.done.items():
            try:
                k = tuple(int(v) for v in key.split("."))
                if k[0] == 0 and payload.split():
                    self._add_stats(*[float(v) for v in payload.split()])
            except ValueError:
                continue  # not one of ours: that chunk is rewritten
            self.done.add(k)
        self._encode = None
        if self.arrays and self.arrays[0].metadata.zarr_format == 2:
            comp = self.arrays[0].metadata.compressor  # a resumed store keeps its codec
            if comp is None or hasattr(comp, "encode"):
                self._encode = comp.encode if comp is not None else memoryview

    def _record(self, key, stats=()):
        self.out.progress.record(".".join(str(v) for v in key), " ".join(repr(float(v)) for v in stats))

    def _add_stats(self, n, s, ss, mn, mx, nf):
        st = self.stats
        st["n"] += n
        st["sum"] += s
        st["sumsq"] += ss
        st["min"] = min(st["min"], mn)
        st["max"] = max(st["max"], mx)
        st["nonfinite"] += nf

    def _region(self, k, idx):
        return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, self.chunks, self.shapes[k]))

    def _children(self, k, idx):
        """Level k-1 chunk indices covered by chunk ``idx`` of level k."""
        ranges = []
        for i, c, f, s in zip(idx, self.chunks, self.factors, self.shapes[k - 1]):
            lo, hi = i * c * f, min((i + 1) * c * f, s)
            ranges.append(range(lo // c, math.ceil(hi / c)))
        return list(product(*ranges))

    def _level0(self, idx, reader, down=False):
        """Write level-0 chunk ``idx``; return it, or its level-1 downsample when ``down``."""
        key = (0,) + idx
        region = self._region(0, idx)
        if key in self.done:
            block = self.arrays[0][region]
            out = _downsample(block, self.factors, self.label) if down else block
        else:
            block = np.asarray(reader(region), dtype=self.dtype)
            stats, small = self._stats_and_downsample(block, down)
            self._store(0, region, block)
            self._record(key, stats)
            self._add_stats(*stats)
            out = small if down else block
        self.progress(1)
        return out

    def _stats_and_downsample(self, block, down, slab_bytes=4 << 20):
        return stats_and_downsample(block, down, self.factors, self.label, slab_bytes)

    _block_stats = staticmethod(block_stats)

    def _store(self, k, region, data):
        """Write whole chunks; Zarr 2 chunk files are encoded here and renamed into place, which
        is faster than Zarr's generic path and never leaves a torn chunk."""
        arr = self.arrays[k]
        if self._encode is None:
            arr[region] = data
            return
        idx = tuple(r.start // c for r, c in zip(region, self.chunks))
        if data.shape != self.chunks:
            full = aligned_empty(self.chunks, self.dtype, fill=0)
            full[tuple(slice(0, n) for n in data.shape)] = data
            data = full
        path = self.path / str(k) / _chunk_key(arr, idx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        data = np.ascontiguousarray(data)
        if not (self._encode is memoryview and _write_direct(tmp, data)):
            with open(tmp, "wb") as fh:
                fh.write(self._encode(data))
        os.replace(tmp, path)

    def _build(self, k, idx, reader, pool):
        """Write chunk ``idx`` of level ``k`` (and what it needs below) and return its data."""
        if k == 0:
            return self._level0(idx, reader)
        key = (k,) + idx
        region = self._region(k, idx)
        if key in self.done:
            self.progress(self._count0(k, idx))
            return self.arrays[k][region]
        out = aligned_empty(tuple(r.stop - r.start for r in region), self.dtype, fill=0)
        kids = self._children(k, idx)

        def child(j):
            if k == 1:
                return j, self._level0(j, reader, down=True)
            return j, _downsample(self._build(k - 1, j, reader, pool), self.factors, self.label)

        results = pool.map(child, kids) if k == 1 else map(child, kids)
        for j, piece in results:
            off = tuple(jj * c // f - r.start for jj, c, f, r in zip(j, self.chunks, self.factors, region))
            out[tuple(slice(o, o + n) for o, n in zip(off, piece.shape))] = piece
        # the store overlaps the next node's reads; the data is already in hand for the parent
        self._pending.append(pool.submit(self._store_and_record, k, region, out, key))
        return out

    def _store_and_record(self, k, region, data, key):
        self._store(k, region, data)
        self._record(key)

    def _count0(self, k, idx):
        return sum(self._count0(k - 1, j) for j in self._children(k, idx)) if k else 1

    def n_chunks0(self):
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.chunks))

    def progress(self, n):  # replaced by callers that want a progress bar
        pass

    def write(self, reader) -> dict:
        """Fill every level from ``reader(region) -> ndarray`` and return the level-0 statistics."""
        if self.complete:
            return dict(self.record.get("stats") or {})
        top = self.levels - 1
        grid = [range(math.ceil(s / c)) for s, c in zip(self.shapes[top], self.chunks)]
        self._pending = []
        with ThreadPoolExecutor(self.threads) as pool:
            if top == 0:
                for _ in pool.map(lambda i: self._build(0, i, reader, pool) is None, product(*grid)):
                    pass
            else:
                for idx in product(*grid):
                    self._build(top, idx, reader, pool)
                    self._pending = [f for f in self._pending if not f.done() or f.result()]
            for f in self._pending:
                f.result()
        st = self.stats
        n = max(st["n"], 1)
        mean = st["sum"] / n
        return {"mean": mean, "std": math.sqrt(max(st["sumsq"] / n - mean * mean, 0.0)),
                "min": st["min"] if st["n"] else None, "max": st["max"] if st["n"] else None,
                "nonfinite": int(st["nonfinite"])}

    def finish(self, **extra):
        if not self.complete:
            mark_complete(self.path, **extra)
