"""Training targets (label maps) built chunk-wise from object lists.

Each output block paints only the objects whose template box touches it, so
a label map larger than RAM can be streamed straight to Zarr
(``da.to_zarr`` / :func:`tomochunk.write_volume`).

DeepFinder compatibility (``TargetBuilder.generate_with_spheres`` /
``generate_with_shapes`` of cryoet-deepfinder 0.2): the results are
voxel-identical, which fixes these rules:

* **Placement.** An object at ``(x, y, z)`` (voxels, floats) is placed at the
  integer voxel ``int(x), int(y), int(z)`` (truncation toward zero). The
  template voxel ``floor(D / 2)`` (``D`` = template size) lands on it.
* **Spheres.** All classes share one cubic template box of size ``2 * Rmax``
  (``Rmax`` = largest radius). A voxel at offset ``(dz, dy, dx)`` from the
  centre is inside class radius ``r`` when ``(dy/r)² + (dz/r)² + (dx/r)² <= 1``.
  Offsets run from ``-Rmax`` to ``Rmax - 1``, so the spheres of the largest
  radius lose their one-voxel caps on the + side (DeepFinder's box).
* **Rotation.** When an object has all three Euler angles, its template is
  rotated first (also spheres) with tomochunk's convention
  (:func:`tomochunk.io.objects.euler_to_matrix`) about DeepFinder's centre, see
  :func:`rotate_template_deepfinder`, then rounded (linear interpolation,
  ``round(v) == 1`` is inside).
* **Overlap.** Objects are painted in list order: **a later object overwrites
  earlier ones** where they overlap, and objects overwrite the ``initial``
  volume (e.g. membranes) wherever their template is inside.
* **Outside.** Objects whose centre lies outside the volume are clipped (or dropped
  when nothing of their template is inside), with a warning giving their count.

The blocks are painted with :mod:`tomochunk.ops._paint`, the painter that
:mod:`tomochunk.ops.heatmap` and :mod:`tomochunk.phantom` share.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize
from scipy.ndimage import map_coordinates

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
# TODO(objects lane): tomochunk._geometry.euler_to_matrix once it lands (same convention)
from ..io.objects import euler_to_matrix
from ._paint import blockwise, route, stamp

log = get_logger(__name__)

__all__ = ["spheres", "shapes", "sphere_template", "rotate_template_deepfinder"]

_DEFAULT_CHUNK = 256


# --- templates -----------------------------------------------------------------------------

def sphere_template(box: int, radius: float) -> np.ndarray:
    """Binary sphere of ``radius`` in a cube of size ``box``, centred on voxel ``box // 2``.

    The inside test is DeepFinder's: ``(dy/r)² + (dz/r)² + (dx/r)² <= 1``
    evaluated in floating point in that order.

    Examples
    --------
    >>> int(sphere_template(4, 1).sum())
    7
    """
    c = np.floor(box / 2)
    i = np.arange(box, dtype=float)
    d = (i - c) / radius
    d2 = d ** 2
    # Sum order (axis1, axis0, axis2) reproduces DeepFinder's meshgrid ('xy') float rounding.
    val = d2[None, :, None] + d2[:, None, None] + d2[None, None, :]
    return val <= 1


def rotate_template_deepfinder(template: np.ndarray, phi: float, psi: float, the: float) -> np.ndarray:
    """Rotate a cubic template by Euler angles exactly as DeepFinder's target builder does.

    The rotation itself is tomochunk's single convention,
    :func:`tomochunk.io.objects.euler_to_matrix` (degrees, TOM/PyTOM ZXZ, an active
    rotation ``R``): the output voxel ``o`` samples the input at
    ``R^T (o - c) + c`` by linear interpolation (zero outside). What is
    specific to DeepFinder (cryoet-deepfinder 0.2) and kept here for
    voxel-identical targets is the centre ``c = D / 2`` (``D`` = cube size),
    which for odd ``D`` is half a voxel off the template's centre voxel
    ``D // 2``; :func:`tomochunk.phantom.rotate_template` uses the true
    centre ``(D - 1) / 2``.

    Parameters
    ----------
    template : ndarray, cubic
    phi, psi, the : float
        Euler angles in degrees.

    Returns
    -------
    ndarray of float
        Interpolated values; ``np.round(out) == 1`` is the rotated object.

    Examples
    --------
    >>> t = sphere_template(8, 3).astype(float)
    >>> bool((np.round(rotate_template_deepfinder(t, 0, 0, 0)) == t).all())
    True
    """
    a = np.asarray(template, dtype=float)
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise ShapeError(f"a template to rotate must be a cube, not shape {a.shape}")
    n = a.shape[0]
    half = float(n) / 2
    # R^T acting on (z, y, x) index vectors: reverse the (x, y, z) axes of R^T.
    m = euler_to_matrix(phi, psi, the).T[::-1, ::-1]
    g = np.indices(a.shape).reshape(3, -1).astype(float) - half
    src = np.dot(m, g) + half
    return map_coordinates(a, src.reshape((3,) + a.shape), order=1)


# --- object table --------------------------------------------------------------------------

def _object_table(objects, tomo):
    """Return (labels, zyx int origins-to-be, angles or None) as numpy arrays."""
    if not isinstance(objects, pd.DataFrame):
        objects = pd.DataFrame(objects)
    if "class_label" not in objects.columns and "label" in objects.columns:
        objects = objects.rename(columns={"label": "class_label"})
    missing = [c for c in ("class_label", "x", "y", "z") if c not in objects.columns]
    if missing:
        raise ValueProblem(f"object list lacks column(s) {missing}")
    if tomo is not None:
        if "tomo" not in objects.columns:
            raise ValueProblem(f"tomo={tomo!r} given but the object list has no 'tomo' column")
        objects = objects[objects["tomo"].astype(str) == str(tomo)]
    elif "tomo" in objects.columns and objects["tomo"].nunique() > 1:
        raise ValueProblem(f"object list spans {objects['tomo'].nunique()} tomograms; "
                           "pass tomo=... to select one")
    labels = objects["class_label"].to_numpy().astype(np.int64)
    if len(labels) and labels.min() < 1:
        raise ValueProblem(f"class_label must be >= 1 (0 is background), found {labels.min()}")
    centre = np.trunc(objects[["z", "y", "x"]].to_numpy(dtype=float)).astype(np.int64)
    angles = None
    if all(c in objects.columns for c in ("phi", "psi", "the")):
        angles = objects[["phi", "psi", "the"]].to_numpy(dtype=float)
    return labels, centre, angles


def _shape_and_initial(shape, initial, chunks):
    if hasattr(shape, "shape") and not isinstance(shape, tuple):
        shape = shape.shape
    if np.isscalar(shape):
        shape = (int(shape),) * 3
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ShapeError(f"a label map is 3D, shape {shape} given")
    init = None
    if initial is not None:
        if tuple(np.shape(initial)) != shape:
            raise ShapeError(f"initial volume has shape {tuple(np.shape(initial))}, "
                             f"the label map {shape}")
        data = getattr(initial, "data", initial)  # xarray -> dask/numpy
        if chunks is None:
            chunks = data.chunks if isinstance(data, da.Array) else _DEFAULT_CHUNK
        init = da.asarray(data).rechunk(chunks)
    chunks = da.core.normalize_chunks(chunks if chunks is not None else _DEFAULT_CHUNK, shape)
    if init is not None and init.chunks != chunks:
        init = init.rechunk(chunks)
    return shape, chunks, init


def _paint_block(args, offset, block_shape, init_block=None):
    """Paint the objects in ``objs`` (in order) into one block."""
    dtype, objs, templates, rotate = args
    out = (np.zeros(block_shape, dtype=dtype) if init_block is None
           else np.array(init_block, dtype=dtype, copy=True))
    labels, centres, angles = objs
    offset = np.asarray(offset)
    cache = {}
    for k in range(len(labels)):
        lbl = int(labels[k])
        tmpl = templates[lbl]
        if rotate and angles is not None and np.all(np.isfinite(angles[k])):
            key = (lbl, *angles[k])
            mask = cache.get(key)
            if mask is None:
                mask = np.round(rotate_template_deepfinder(tmpl, *angles[k])) == 1
                cache[key] = mask
        else:
            mask = tmpl
        # the template voxel D // 2 lands on the object's voxel
        stamp(out, mask, centres[k] - np.asarray(mask.shape) // 2 - offset, value=lbl)
    return out


def _build(objects, shape, templates, *, chunks, initial, dtype, tomo, rotate, name):
    labels, centres, angles = _object_table(objects, tomo)
    unknown = sorted(set(labels.tolist()) - set(templates))
    if unknown:
        raise ValueProblem(f"no radius/mask given for class label(s) {unknown}")
    shape, chunks, init = _shape_and_initial(shape, initial, chunks)
    if dtype is None:
        top = max(list(templates) + [0])
        dtype = np.uint8 if top < 256 else np.uint16
        if init is not None:
            dtype = np.promote_types(dtype, init.dtype)
    dtype = np.dtype(dtype)
    outside = int(np.sum(np.any((centres < 0) | (centres >= np.asarray(shape)), axis=1))) if len(centres) else 0
    if outside:
        warnings.warn(f"{name}: {outside} of {len(labels)} objects lie outside the volume (z, y, x) = "
                      f"{shape}; they are clipped or left out", stacklevel=3)

    # which blocks each object's template box touches
    size = {lbl: np.asarray(t.shape) for lbl, t in templates.items()}
    tsize = np.array([size[int(lbl)] for lbl in labels], np.int64).reshape(-1, 3)
    lo = centres - tsize // 2
    per_block = route(lo, lo + tsize, chunks)
    empty = np.zeros(0, np.int64)

    def block_args(idx, offset, bshape):
        ks = per_block.get(idx, empty)
        objs = (labels[ks], centres[ks], None if angles is None else angles[ks])
        used = {int(lbl): templates[int(lbl)] for lbl in np.unique(objs[0])}
        return dtype, objs, used, rotate

    token = (labels, centres, angles, {k: tokenize(v) for k, v in templates.items()}, shape, dtype, rotate)
    log.info("%s: %d objects over %d blocks", name, len(labels), int(np.prod([len(c) for c in chunks])))
    return blockwise(_paint_block, chunks, block_args, name=name, token=token, dtype=dtype, initial=init)


def _per_class(values, what):
    """Accept {label: v}, a sequence (index = label - 1) or a scalar (every label)."""
    if isinstance(values, dict):
        return {int(k): v for k, v in values.items()}
    if np.isscalar(values):
        return None
    return {i + 1: v for i, v in enumerate(values)}


def spheres(objects, shape, radii, *, chunks=None, initial=None, dtype=None, tomo=None,
            rotate: bool = True):
    """Label map with a sphere per object, built lazily block by block.

    Voxel-identical to DeepFinder's ``TargetBuilder.generate_with_spheres``
    (see the module docstring for the exact rules: integer placement by
    truncation, shared ``2*Rmax`` box, later objects overwrite earlier ones).

    Parameters
    ----------
    objects : pandas.DataFrame
        Object list with ``class_label, x, y, z`` (voxels) and optionally
        ``phi, psi, the`` (then the sphere is rotated like DeepFinder does,
        which can move a few boundary voxels) and ``tomo``.
    shape : tuple of 3 ints or array
        Shape ``(z, y, x)`` of the label map, or a volume whose shape to use.
    radii : dict, sequence or int
        Sphere radius in voxels per class: ``{label: r}``, a list whose
        element ``i`` is the radius of class ``i + 1`` (DeepFinder's
        ``radius_list``), or one radius for all classes.
    chunks : int or tuple, optional
        Dask chunks of the result (default: those of ``initial``, else 256³).
        Use multiples of the storage chunks when writing to Zarr.
    initial : array, optional
        Volume to start from (e.g. membrane labels); objects overwrite it.
    dtype : dtype, optional
        Default uint8 (uint16 for labels >= 256).
    tomo : str or int, optional
        Use only the objects of this tomogram (required when the list spans
        several).
    rotate : bool
        Rotate spheres of objects that carry Euler angles (DeepFinder does).

    Returns
    -------
    dask.array.Array
        Integer label map ``[z, y, x]``, 0 = background.

    Examples
    --------
    >>> import pandas as pd
    >>> objs = pd.DataFrame({"class_label": [1, 2], "x": [10, 30], "y": [10, 30], "z": [10, 30]})
    >>> lab = spheres(objs, (40, 40, 40), {1: 3, 2: 5}, chunks=20)
    >>> int((lab.compute() == 1).sum())
    123
    """
    per = _per_class(radii, "radius")
    if per is None:
        labels, _, _ = _object_table(objects, tomo)
        per = {int(lbl): radii for lbl in np.unique(labels)} or {1: radii}
    for lbl, r in per.items():
        if not np.isscalar(r) or r <= 0:
            raise ValueProblem(f"sphere radius of class {lbl} must be a positive number, not {r!r}")
    rmax = max(per.values())
    box = int(2 * rmax)
    templates = {lbl: sphere_template(box, r) for lbl, r in per.items()}
    return _build(objects, shape, templates, chunks=chunks, initial=initial, dtype=dtype,
                  tomo=tomo, rotate=rotate, name="spheres")


def shapes(objects, shape, masks, *, chunks=None, initial=None, dtype=None, tomo=None,
           rotate: bool = True):
    """Label map with a (rotated) binary shape per object, built lazily block by block.

    Voxel-identical to DeepFinder's ``TargetBuilder.generate_with_shapes``:
    the mask voxel ``D // 2`` lands on ``int(x), int(y), int(z)``, the mask
    is rotated by the object's Euler angles (``phi, psi, the``, degrees,
    see :func:`rotate_template_deepfinder`) and later objects overwrite
    earlier ones.

    Parameters
    ----------
    objects : pandas.DataFrame
        Object list (``class_label, x, y, z``, optional ``phi, psi, the``, ``tomo``).
    shape : tuple of 3 ints or array
        Shape of the label map, or a volume whose shape to use.
    masks : dict or sequence of 3D arrays
        Binary mask per class (``{label: mask}`` or DeepFinder's ``ref_list``
        where element ``i`` is class ``i + 1``). Voxels equal to 1 (or True)
        are the object. Masks must be cubic to be rotated.
    chunks, initial, dtype, tomo, rotate
        As in :func:`spheres`.

    Returns
    -------
    dask.array.Array

    Examples
    --------
    >>> import pandas as pd
    >>> objs = pd.DataFrame({"class_label": [1], "x": [8], "y": [8], "z": [8],
    ...                      "phi": [0.0], "psi": [0.0], "the": [90.0]})
    >>> rod = np.zeros((9, 9, 9), bool); rod[4, 4, :] = True
    >>> lab = shapes(objs, (16, 16, 16), {1: rod}).compute()
    >>> int(lab.sum())
    9
    """
    per = _per_class(masks, "mask")
    if per is None:
        raise ValueProblem("masks must be a dict {label: mask} or a list of masks")
    templates = {}
    for lbl, m in per.items():
        m = np.asarray(m)
        if m.ndim != 3:
            raise ShapeError(f"mask of class {lbl} must be 3D, not shape {m.shape}")
        templates[lbl] = m if m.dtype == bool else (m == 1)
    if rotate:
        objs_angles = _object_table(objects, tomo)[2]
        if objs_angles is not None:
            for lbl, m in templates.items():
                if len(set(m.shape)) != 1:
                    raise ShapeError(f"mask of class {lbl} must be cubic to be rotated, "
                                     f"not shape {m.shape}")
    return _build(objects, shape, templates, chunks=chunks, initial=initial, dtype=dtype,
                  tomo=tomo, rotate=rotate, name="shapes")
