"""Surface meshes of segmented objects: marching cubes per object, written as Wavefront ``.obj``.

Vertices are written in Å, in ``x y z`` order (x = column, y = row, z = slice),
the order mesh viewers (ChimeraX, napari, Blender, trimesh) expect. Voxel
``[z, y, x]`` sits at ``origin + (x, y, z) * voxel_size`` Å, the same place as in the
xarray coordinates from :func:`tomochunk.open_volume` (``origin`` is
``attrs["origin"]``, 0 where there is none). Faces are wound so that normals point outwards.

The map is never held whole. A first pass labels each class block by block
(:func:`scipy.ndimage.label` per block, with the labels that touch across a block
face joined by a union-find), keeping per object only its size, bounding box and
first voxel. A second pass reads each object's bounding box (plus one voxel) and
meshes it, exactly as marching cubes on the whole volume would: memory is one block,
or the largest object's box.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage as ndi

from .._blocks import block_slices
from .._log import get_logger
from .._names import inside, safe_name
from ..errors import ExistsError, ShapeError, ValueProblem
from ._source import check_chunks, check_voxel_size
from .volume import open_volume

log = get_logger(__name__)

#: pass-1 block side for in-memory (numpy) input; lazy input keeps its own chunks
BLOCK = 128


def _as_array(data):
    """(dask array, dims, voxel_size, class names, origin_zyx) from a path, numpy, dask or xarray input."""
    if isinstance(data, (str, os.PathLike)):
        data = open_volume(data)
    names, origin = {}, None
    if isinstance(data, xr.DataArray):
        vs = data.attrs.get("voxel_size")
        names = dict(data.attrs.get("classes", {}) or {})
        origin = data.attrs.get("origin")
        dims = tuple(data.dims)
        data = data.data
    else:
        vs, dims = None, None
    if dims is None:
        dims = {3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}.get(np.ndim(data))
    if dims is None or len(dims) != np.ndim(data) or tuple(dims[-3:]) != ("z", "y", "x"):
        raise ShapeError(f"export_meshes needs a [z, y, x] label map or a [c, z, y, x] score map, "
                         f"got dims {dims} with shape {np.shape(data)}")
    return data, dims, vs, {int(k): str(v) for k, v in names.items()}, origin


def _compute(a):
    return a.compute() if hasattr(a, "compute") else np.asarray(a)


def _mesh_box(own, field_box, lo, level, voxel_size, step_size):
    """Marching cubes of one object's mask ``own`` (its box starts at voxel ``lo``): verts (x, y, z Å), faces."""
    from skimage.measure import marching_cubes

    if field_box is None:
        vol, lev = own.astype(np.float32), 0.5
    else:
        # keep this object's values only, so a neighbour in the box adds no surface
        near = ndi.binary_dilation(own, iterations=1)
        vol = np.where(near, np.asarray(field_box, np.float32), np.float32(min(level - 1, 0)))
        lev = level
    # a zero pad so that objects on the border close
    vol = np.pad(vol, 1, constant_values=min(float(vol.min()), lev - 1))
    verts, faces, _, _ = marching_cubes(vol, level=lev, step_size=step_size)
    verts = (verts + np.asarray(lo) - 1) * voxel_size
    # zyx -> xyz mirrors the mesh, which turns skimage's inward winding outward (checked in tests)
    return verts[:, ::-1].copy(), faces


def object_meshes(mask, *, field=None, level=0.5, min_volume=27, voxel_size=1.0, step_size=1):
    """Yield ``(obj_id, size, verts_xyz_Å, faces, centroid_zyx)`` per connected object of an in-memory mask.

    ``field`` (optional, same shape) is the scalar map the surface is drawn on at
    ``level`` (a score map gives smoother surfaces than the binary mask). This is the
    whole-volume reference; :func:`export_meshes` gives the same meshes blockwise.

    Examples
    --------
    >>> m = np.zeros((12, 12, 12), bool); m[3:9, 3:9, 3:9] = True
    >>> [(i, n, len(f) > 0) for i, n, v, f, c in object_meshes(m)]
    [(1, 216, True)]
    """
    lab, n = ndi.label(mask)
    if n == 0:
        return
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    shape = np.array(mask.shape)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or sizes[i] < min_volume:
            continue
        lo = np.array([max(s.start - 1, 0) for s in sl])  # one voxel of context each side
        hi = np.minimum([s.stop + 1 for s in sl], shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        own = lab[box] == i
        verts, faces = _mesh_box(own, None if field is None else field[box], lo, level, voxel_size, step_size)
        yield i, int(sizes[i]), verts, faces, np.array(ndi.center_of_mass(own)) + lo


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self, n):
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, a):
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:  # path compression
            p[a], a = root, p[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _blockwise_objects(arr, classes, score, level, on_block=None):
    """Pass 1: every connected object of every class, labelled one block at a time.

    Returns ``{class: [(first_voxel_zyx, size, lo_zyx, hi_zyx), ...]}`` sorted by the first
    voxel in C order, which is the order :func:`scipy.ndimage.label` numbers them on the
    whole volume; and the classes found (label maps with ``classes=None``).
    """
    spatial = arr.chunks[-3:]
    nblocks = [len(c) for c in spatial]
    uf = _UnionFind()
    info = []  # per provisional id: class, size, lo, hi, first voxel
    faces = {}  # target block -> [(class, axis, provisional ids on the shared face)]
    found = set()
    for idx, sl in block_slices(spatial):
        off = np.array([s.start for s in sl])
        pending = faces.pop(idx, [])
        if score:
            todo = [(c, None) for c in classes]
            block = None
        else:
            block = np.asarray(arr[sl].compute())
            present = [int(c) for c in np.unique(block) if c != 0]
            found.update(present)
            todo = [(c, None) for c in present if classes is None or c in classes]
        if on_block is not None:
            on_block(idx, sl)
        for c, _ in todo:
            mask = np.asarray(arr[c][sl].compute(), np.float32) >= level if score else block == c
            lab, n = ndi.label(mask)
            if n == 0:
                continue
            base = uf.add(n)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            flat = lab.ravel()
            nz = np.flatnonzero(flat)
            _, first = np.unique(flat[nz], return_index=True)
            seeds = np.stack(np.unravel_index(nz[first], lab.shape), axis=1) + off
            for i, s in enumerate(ndi.find_objects(lab)):
                lo = off + [x.start for x in s]
                hi = off + [x.stop for x in s]
                info.append([c, int(sizes[i]), lo, hi, tuple(int(v) for v in seeds[i])])
            ids = np.where(lab > 0, lab.astype(np.int64) + (base - 1), -1)
            for cc, axis, other in pending:
                if cc != c:
                    continue
                mine = np.take(ids, 0, axis=axis)
                both = (mine >= 0) & (other >= 0)
                if both.any():
                    for a, b in np.unique(np.stack([mine[both], other[both]], axis=1), axis=0):
                        uf.union(int(a), int(b))
            for axis in range(3):
                if idx[axis] + 1 < nblocks[axis]:
                    nxt = tuple(i + (k == axis) for k, i in enumerate(idx))
                    faces.setdefault(nxt, []).append((c, axis, np.take(ids, -1, axis=axis)))
    merged = {}
    for pid, (c, size, lo, hi, seed) in enumerate(info):
        root = uf.find(pid)
        if root not in merged:
            merged[root] = [c, size, lo.copy(), hi.copy(), seed]
        else:
            m = merged[root]
            m[1] += size
            m[2], m[3] = np.minimum(m[2], lo), np.maximum(m[3], hi)
            m[4] = min(m[4], seed)
    objects = {}
    for c, size, lo, hi, seed in merged.values():
        objects.setdefault(c, []).append((seed, size, lo, hi))
    for c in objects:
        objects[c].sort(key=lambda o: o[0])
    return objects, sorted(found)


def export_meshes(data, path, *, level=0.5, min_volume=27, voxel_size=None, classes=None, step_size=1,
                  overwrite=False, chunks=None):
    """Run marching cubes on every object of a label map or score map and write ``.obj`` meshes.

    Objects are the face-connected components (:func:`scipy.ndimage.label`) of each class: ``labels == c`` for a
    label map, ``scores[c] >= level`` for a score map. Objects smaller than
    ``min_volume`` voxels (dust) are dropped. The map is read block by block, then
    object by object from its bounding box (see the module notes): no class mask is
    ever held whole.

    Parameters
    ----------
    data : array-like, xarray.DataArray or path
        Integer label map ``[z, y, x]`` (0 = background) or score map
        ``[c, z, y, x]`` (class 0 = background, skipped).
    path : str or Path
        A file ending in ``.obj`` gets every object as a named group (``o class_obj``);
        any other path is a folder that gets one ``.obj`` per object,
        ``<class name>_<obj id>.obj``. Class names from the data are made file-name safe
        (:func:`tomochunk._names.safe_name`): a name such as ``../../x`` or ``/etc/x`` never
        puts a file outside this folder.
    level : float
        Iso-level for score maps (label maps are meshed at the half-way level of their mask).
    min_volume : int
        Dust size in voxels: smaller objects are not meshed.
    voxel_size : float, optional
        Å per voxel (default: ``data.attrs["voxel_size"]``, else 1).
    classes : list of int or dict, optional
        Classes to mesh (default: every non-zero label / every score channel after 0).
        A dict ``{label: name}`` also names the output groups and files.
    step_size : int
        Marching-cubes step (2 gives ~4× fewer triangles on big objects).
    overwrite : bool
        Replace existing output files.
    chunks : int or tuple, optional
        Block size of the labelling pass (default: the array's own chunks; 128³ for numpy input).

    Returns
    -------
    pandas.DataFrame
        One row per mesh: ``class_label, x, y, z`` (centroid, voxels), ``size``,
        ``obj_id``, ``n_vertices``, ``n_faces``, ``file``; ``attrs["voxel_size"]``.

    Examples
    --------
    >>> import tempfile
    >>> lab = np.zeros((32, 32, 32), np.uint8); lab[8:20, 8:20, 8:20] = 1
    >>> df = export_meshes(lab, Path(tempfile.mkdtemp()) / "cube.obj", voxel_size=10.0, chunks=16)
    >>> df[["class_label", "size", "obj_id"]].values.tolist()
    [[1, 1728, 1]]
    """
    arr, dims, vs, names, origin = _as_array(data)
    voxel_size = check_voxel_size(voxel_size) if voxel_size is not None else \
        check_voxel_size(vs, "attrs['voxel_size']") if vs is not None else 1.0
    if isinstance(classes, dict):
        names.update({int(k): str(v) for k, v in classes.items()})
        classes = list(classes)
    score = len(dims) == 4
    if not isinstance(arr, da.Array):
        arr = np.asarray(arr)
        block = check_chunks(chunks, 3) if chunks is not None else (BLOCK,) * 3
        arr = da.from_array(arr, chunks=((1,) if score else ()) + block)
    elif chunks is not None:
        arr = arr.rechunk(((1,) if score else ()) + check_chunks(chunks, 3))
    if score and classes is None:
        classes = list(range(1, arr.shape[0]))
    if classes is not None:
        classes = [int(c) for c in classes]
    if score and any(c < 0 or c >= arr.shape[0] for c in classes):
        raise ValueProblem(f"classes {classes} outside the score map's {arr.shape[0]} channels")
    if not score and np.dtype(arr.dtype).kind not in "iub":
        raise ShapeError(f"a 3D map must be an integer label map, got {arr.dtype}; "
                         "pass a [c, z, y, x] score map for float data")
    shift = np.asarray(origin, float)[::-1] if origin is not None else np.zeros(3)  # z,y,x -> x,y,z

    objects, found = _blockwise_objects(arr, classes, score, level)
    if classes is None:
        classes = found
    # names come from the map's metadata: made file-name safe before anything is written
    cnames = {c: safe_name(names[c], f"class name of label {c}") for c in classes if c in names}
    path = Path(path)
    single = path.suffix.lower() == ".obj"
    if single:
        if path.exists() and not overwrite:
            raise ExistsError("output exists; pass overwrite=True to replace it", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        fh = open(tmp, "w")
        fh.write(f"# tomochunk meshes: vertices in Angstrom, x y z order, voxel size {voxel_size}\n")
    else:
        path.mkdir(parents=True, exist_ok=True)
    shape = np.array(arr.shape[-3:])
    rows, offset = [], 0
    try:
        for c in classes:
            cname = cnames.get(c, f"class{c}")
            n_c = 0
            for oid, (seed, size, lo, hi) in enumerate(objects.get(c, []), start=1):
                if size < min_volume:
                    continue
                blo, bhi = np.maximum(lo - 1, 0), np.minimum(hi + 1, shape)  # one voxel of context
                box = tuple(slice(int(a), int(b)) for a, b in zip(blo, bhi))
                if score:
                    field = np.asarray(arr[c][box].compute(), np.float32)
                    mask = field >= level
                else:
                    field, mask = None, np.asarray(arr[box].compute()) == c
                lab, _ = ndi.label(mask)
                own = lab == lab[tuple(int(s - b) for s, b in zip(seed, blo))]
                verts, faces = _mesh_box(own, field, blo, level, voxel_size, step_size)
                verts += shift
                cen = np.array(ndi.center_of_mass(own)) + blo
                gname = f"{cname}_{oid:04d}"
                if single:
                    _write_obj(fh, gname, verts, faces, offset)
                    offset += len(verts)
                    out = path
                else:
                    out = inside(f"{gname}.obj", path)
                    if out.exists() and not overwrite:
                        raise ExistsError("output exists; pass overwrite=True to replace it", out)
                    with open(out, "w") as f1:
                        f1.write(f"# tomochunk mesh: vertices in Angstrom, x y z order, voxel size {voxel_size}\n")
                        _write_obj(f1, gname, verts, faces, 0)
                rows.append(dict(class_label=c, x=cen[2], y=cen[1], z=cen[0], size=size, obj_id=oid,
                                 n_vertices=len(verts), n_faces=len(faces), file=str(out)))
                n_c += 1
            log.info("class %s: %d meshes", cname, n_c)
    finally:
        if single:
            fh.close()
    if single:
        os.replace(tmp, path)
    df = pd.DataFrame(rows, columns=["class_label", "x", "y", "z", "size", "obj_id", "n_vertices", "n_faces",
                                     "file"])
    df.attrs["voxel_size"] = voxel_size
    if names:
        df.attrs["classes"] = {c: names[c] for c in classes if c in names}
    return df


def _write_obj(fh, name, verts, faces, offset):
    fh.write(f"o {name}\n")
    np.savetxt(fh, verts, fmt="v %.3f %.3f %.3f")
    np.savetxt(fh, faces + offset + 1, fmt="f %d %d %d")
