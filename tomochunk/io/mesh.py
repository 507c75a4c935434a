"""Surface meshes of segmented objects: marching cubes per object, written as Wavefront ``.obj``.

Vertices are written in Å, in ``x y z`` order (x = column, y = row, z = slice),
the order mesh viewers (ChimeraX, napari, Blender, trimesh) expect. Voxel
``[z, y, x]`` sits at ``(x, y, z) * voxel_size`` Å, the same origin as the
xarray coordinates from :func:`tomochunk.open_volume`. Faces are wound so that
normals point outwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage as ndi

from .._log import get_logger
from .._names import inside, safe_name
from ..errors import ExistsError, ShapeError, ValueProblem
from ._source import check_voxel_size
from .volume import open_volume

log = get_logger(__name__)


def _as_array(data):
    """(dask-or-numpy array, dims, voxel_size, class names) from a path, numpy, dask or xarray input."""
    if isinstance(data, (str, os.PathLike)):
        data = open_volume(data)
    names = {}
    if isinstance(data, xr.DataArray):
        vs = data.attrs.get("voxel_size")
        names = dict(data.attrs.get("classes", {}) or {})
        dims = tuple(data.dims)
        data = data.data
    else:
        vs, dims = None, None
    if dims is None:
        dims = {3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}.get(np.ndim(data))
    if dims is None or len(dims) != np.ndim(data) or tuple(dims[-3:]) != ("z", "y", "x"):
        raise ShapeError(f"export_meshes needs a [z, y, x] label map or a [c, z, y, x] score map, "
                         f"got dims {dims} with shape {np.shape(data)}")
    return data, dims, vs, {int(k): str(v) for k, v in names.items()}


def _compute(a):
    return a.compute() if hasattr(a, "compute") else np.asarray(a)


def object_meshes(mask, *, field=None, level=0.5, min_volume=27, voxel_size=1.0, step_size=1):
    """Yield ``(obj_id, size, verts_xyz_Å, faces, centroid_zyx)`` per connected object of a boolean mask.

    ``field`` (optional, same shape) is the scalar map the surface is drawn on at
    ``level`` (a score map gives smoother surfaces than the binary mask).
    """
    from skimage.measure import marching_cubes

    lab, n = ndi.label(mask)
    if n == 0:
        return
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    slices = ndi.find_objects(lab)
    shape = np.array(mask.shape)
    for i, sl in enumerate(slices, start=1):
        if sl is None or sizes[i] < min_volume:
            continue
        # one voxel of context each side, then a zero pad so objects on the border close
        lo = np.array([max(s.start - 1, 0) for s in sl])
        hi = np.minimum([s.stop + 1 for s in sl], shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        own = lab[box] == i
        if field is None:
            vol, lev = own.astype(np.float32), 0.5
        else:
            # keep this object's values only, so a neighbour in the box adds no surface
            near = ndi.binary_dilation(own, iterations=1)
            vol = np.where(near, np.asarray(field[box], np.float32), np.float32(min(level - 1, 0)))
            lev = level
        vol = np.pad(vol, 1, constant_values=min(float(vol.min()), lev - 1))
        verts, faces, _, _ = marching_cubes(vol, level=lev, step_size=step_size)
        verts = (verts + lo - 1) * voxel_size
        centroid = np.array(ndi.center_of_mass(own)) + lo
        # zyx -> xyz mirrors the mesh, which turns skimage's inward winding outward (checked in tests)
        yield i, int(sizes[i]), verts[:, ::-1].copy(), faces, centroid


def _write_obj(fh, name, verts, faces, offset):
    fh.write(f"o {name}\n")
    np.savetxt(fh, verts, fmt="v %.3f %.3f %.3f")
    np.savetxt(fh, faces + offset + 1, fmt="f %d %d %d")


def export_meshes(data, path, *, level=0.5, min_volume=27, voxel_size=None, classes=None, step_size=1,
                  overwrite=False):
    """Run marching cubes on every object of a label map or score map and write ``.obj`` meshes.

    Objects are the face-connected components (:func:`scipy.ndimage.label`) of each class: ``labels == c`` for a
    label map, ``scores[c] >= level`` for a score map. Objects smaller than
    ``min_volume`` voxels (dust) are dropped.

    Parameters
    ----------
    data : array-like, xarray.DataArray or path
        Integer label map ``[z, y, x]`` (0 = background) or score map
        ``[c, z, y, x]`` (class 0 = background, skipped). Lazy (dask) input is
        computed one class mask at a time, one byte per voxel.
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

    Returns
    -------
    pandas.DataFrame
        One row per mesh: ``class_label, x, y, z`` (centroid, voxels), ``size``,
        ``obj_id``, ``n_vertices``, ``n_faces``, ``file``; ``attrs["voxel_size"]``.

    Examples
    --------
    >>> lab = np.zeros((32, 32, 32), np.uint8); lab[8:20, 8:20, 8:20] = 1
    >>> df = export_meshes(lab, "cube.obj", voxel_size=10.0)  # doctest: +SKIP
    >>> df[["class_label", "size", "n_vertices"]]  # doctest: +SKIP
    """
    arr, dims, vs, names = _as_array(data)
    voxel_size = check_voxel_size(voxel_size) if voxel_size is not None else \
        check_voxel_size(vs, "attrs['voxel_size']") if vs is not None else 1.0
    if isinstance(classes, dict):
        names.update({int(k): str(v) for k, v in classes.items()})
        classes = list(classes)
    score = len(dims) == 4
    if classes is None:
        if score:
            classes = list(range(1, arr.shape[0]))
        else:
            arr = _compute(arr)
            classes = [int(c) for c in np.unique(arr) if c != 0]
    classes = [int(c) for c in classes]
    if score and any(c < 0 or c >= arr.shape[0] for c in classes):
        raise ValueProblem(f"classes {classes} outside the score map's {arr.shape[0]} channels")
    if not score and np.ndim(arr) == 3 and np.dtype(arr.dtype).kind not in "iub":
        raise ShapeError(f"a 3D map must be an integer label map, got {arr.dtype}; "
                         "pass a [c, z, y, x] score map for float data")

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
    rows, offset = [], 0
    try:
        for c in classes:
            # names come from the map's metadata: made file-name safe, so no file leaves the output
            cname = safe_name(names[c], f"class name of label {c}") if c in names else f"class{c}"
            if score:
                field = _compute(arr[c]).astype(np.float32, copy=False)
                mask = field >= level
            else:
                field, mask = None, _compute(arr == c)
            for oid, size, verts, faces, cen in object_meshes(mask, field=field, level=level,
                                                               min_volume=min_volume, voxel_size=voxel_size,
                                                               step_size=step_size):
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
            log.info("class %s: %d meshes", cname, sum(r["class_label"] == c for r in rows))
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
