"""Synthetic data with ground truth: cryo-ET-like phantom tomograms and TIRF-like movies.

Everything is procedural and deterministic for a seed, so tests, demos and
benchmarks never download data. Both generators return numpy arrays, or dask
arrays built block by block when ``chunks=`` is given (for volumes larger than
memory, written straight to Zarr).

Rotation convention
-------------------
Euler angles ``phi, psi, the`` are in degrees, in the TOM/PyTOM ZXZ convention
used by DeepFinder. The rotation matrix, acting on column vectors ``(x, y, z)``, is::

    R = Rz(psi) @ Rx(the) @ Rz(phi)

(first ``phi`` about z, then ``the`` about x, then ``psi`` about z; this is
TOM's ``tom_rotmatrix``). It is an *active* rotation: a point ``b`` of an
object's body frame (its unrotated template, centred on the origin) appears at
``centre + R @ b`` in the tomogram. :func:`euler_matrix` builds ``R``.

Templates are cubes of even side ``D`` whose centre is voxel ``D // 2``
(DeepFinder's template convention), and :func:`rotate_template` rotates them
about that voxel with :func:`tomochunk.ops.targets.rotate_template_deepfinder`
(linear interpolation, ``round(value) == 1`` is inside), the one implementation
of DeepFinder's rotation in this package, whose matrix equals ``R`` (tested).
So ``tomochunk.targets.shapes(objects, shape, class_templates(classes))``
rebuilds a phantom's label map voxel for voxel.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product

import dask.array as da
import numpy as np
import pandas as pd
from scipy import fft, ndimage
from scipy.spatial import cKDTree

from ._geometry import euler_to_matrix as euler_matrix  # the one ZXZ rotation; re-exported under its old name
from ._log import get_logger
from .errors import ValueProblem
from .ops._paint import blockwise, stamp
from .ops.targets import rotate_template_deepfinder

log = get_logger(__name__)

__all__ = ["phantom_tomogram", "phantom_movie", "class_templates", "rotate_template", "euler_matrix",
           "missing_wedge_filter", "SHAPES"]

# --- shapes ---------------------------------------------------------------------------------------
# Signed distance functions (approximate where exact ones are costly) on body-frame coordinates
# x, y, z in voxels; r is the class size: every shape fits inside the sphere of radius r.


def _capsule(x, y, z, a, b, rad):
    """Distance to the segment a-b, minus rad."""
    ax, ay, az = a
    bx, by, bz = b
    dx, dy, dz = bx - ax, by - ay, bz - az
    t = ((x - ax) * dx + (y - ay) * dy + (z - az) * dz) / max(dx * dx + dy * dy + dz * dz, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 + (z - az - t * dz) ** 2) - rad


def _sdf_sphere(x, y, z, r):
    return np.sqrt(x * x + y * y + z * z) - r


def _sdf_ellipsoid(x, y, z, r):
    a, b, c = r, 0.6 * r, 0.4 * r
    return (np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2) - 1.0) * c


def _sdf_shell(x, y, z, r):
    t = max(2.0, 0.25 * r)
    return np.abs(np.sqrt(x * x + y * y + z * z) - (r - t / 2)) - t / 2


def _sdf_rod(x, y, z, r):
    rc = max(1.5, 0.3 * r)
    return _capsule(x, y, z, (0, 0, -(r - rc)), (0, 0, r - rc), rc)


def _sdf_dumbbell(x, y, z, r):
    rs = 0.42 * r
    bar = max(1.0, 0.16 * r)
    zc = r - rs
    s1 = np.sqrt(x * x + y * y + (z - zc) ** 2) - rs
    s2 = np.sqrt(x * x + y * y + (z + zc) ** 2) - rs
    return np.minimum(np.minimum(s1, s2), _capsule(x, y, z, (0, 0, -zc), (0, 0, zc), bar))


def _sdf_ring(x, y, z, r):
    rt = max(1.5, 0.3 * r)
    return np.sqrt((np.sqrt(x * x + y * y) - (r - rt)) ** 2 + z * z) - rt


def _sdf_lshape(x, y, z, r):
    rc = max(1.5, 0.25 * r)
    a = (r - rc) / math.sqrt(2)
    return np.minimum(_capsule(x, y, z, (-a, 0, -a), (-a, 0, a), rc),
                      _capsule(x, y, z, (-a, 0, -a), (a, 0, -a), rc))


#: Shape name -> (signed distance function, default size in voxels). ``classes=N`` takes the first N.
SHAPES = {
    "sphere": (_sdf_sphere, 5.0),
    "ellipsoid": (_sdf_ellipsoid, 8.0),
    "shell": (_sdf_shell, 8.0),
    "rod": (_sdf_rod, 8.0),
    "dumbbell": (_sdf_dumbbell, 9.0),
    "ring": (_sdf_ring, 7.0),
    "lshape": (_sdf_lshape, 8.0),
}


def _class_specs(classes) -> tuple[tuple[str, float], ...]:
    """Normalise ``classes`` to ``((name, size), ...)``; class label k is entry k-1."""
    if classes is None:
        classes = 5
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if not 1 <= classes <= len(SHAPES):
            raise ValueProblem(f"classes={classes}: choose between 1 and {len(SHAPES)} shapes")
        return tuple((n, SHAPES[n][1]) for n in list(SHAPES)[:classes])
    if isinstance(classes, dict):
        classes = list(classes.items())
    out = []
    for c in classes:
        name, size = (c, None) if isinstance(c, str) else (c[0], c[1])
        if name not in SHAPES:
            raise ValueProblem(f"unknown shape {name!r}; known shapes: {', '.join(SHAPES)}")
        size = float(SHAPES[name][1] if size is None else size)
        if size < 1.5:
            raise ValueProblem(f"shape {name!r}: size {size} is too small (at least 1.5 voxels)")
        out.append((name, size))
    if not out:
        raise ValueProblem("classes is empty")
    return tuple(out)


def _half(size: float) -> int:
    """Half-side of the even template cube holding a shape of this size, with room to rotate."""
    return int(math.ceil(size)) + 2


@lru_cache(maxsize=64)
def _template(name: str, size: float) -> np.ndarray:
    h = _half(size)
    z, y, x = np.mgrid[-h:h, -h:h, -h:h].astype(np.float32)
    mask = SHAPES[name][0](x, y, z, size) <= 0
    mask.setflags(write=False)
    return mask


def class_templates(classes=None) -> dict[int, np.ndarray]:
    """Unrotated boolean masks of the phantom classes, centred in even cubes.

    Parameters
    ----------
    classes : int, list or dict, optional
        As in :func:`phantom_tomogram`: the first N shapes of :data:`SHAPES`, or
        shape names, ``(name, size)`` pairs or ``{name: size}`` (size = radius of the
        bounding sphere in voxels).

    Returns
    -------
    dict
        ``{label: mask}``, labels from 1, each mask ``[z, y, x]`` a cube of even
        side ``D = 2 * (ceil(size) + 2)`` with the shape centred on voxel
        ``D // 2`` (DeepFinder's convention: that voxel lands on the object's
        coordinates), leaving room to rotate it.

    Examples
    --------
    >>> t = class_templates(["sphere", ("rod", 6)])
    >>> sorted(t), t[1].shape
    ([1, 2], (14, 14, 14))
    """
    return {k: _template(name, size).copy() for k, (name, size) in enumerate(_class_specs(classes), 1)}


def _rotate_float(vol: np.ndarray, phi: float, psi: float, the: float) -> np.ndarray:
    """Linear-interpolated rotation about voxel ``D / 2`` (float32); see the module doc."""
    vol = np.asarray(vol, dtype=np.float32)
    if phi == 0 and psi == 0 and the == 0:
        return vol.copy()
    return rotate_template_deepfinder(vol, phi, psi, the).astype(np.float32)


def rotate_template(mask: np.ndarray, phi: float, psi: float, the: float) -> np.ndarray:
    """Rotate a cubic template about voxel ``D / 2`` by Euler angles (degrees, ZXZ; see the module doc).

    Boolean masks are interpolated linearly and ``round(value) == 1`` is kept,
    exactly as :func:`phantom_tomogram` draws its label maps and
    :mod:`tomochunk.targets` its targets; other arrays are returned
    interpolated (float32).

    Examples
    --------
    >>> rod = class_templates(["rod"])[1]
    >>> flat = rotate_template(rod, 0, 0, 90)   # the rod's z axis turned onto -y
    >>> flat.shape == rod.shape, bool(flat[10, :, 10].sum() > 8)
    (True, True)
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or len(set(mask.shape)) != 1:
        raise ValueProblem(f"rotate_template needs a cubic 3D array, got shape {mask.shape}")
    if mask.dtype == bool:
        return np.round(_rotate_float(mask, phi, psi, the)) == 1
    return _rotate_float(mask, phi, psi, the)


def _random_angles(rng, n):
    """Uniform random rotations: phi, psi uniform, cos(the) uniform."""
    phi = rng.uniform(0.0, 360.0, n)
    psi = rng.uniform(0.0, 360.0, n)
    the = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return phi, psi, the


# --- noise that does not depend on the chunking -------------------------------------------------

_TILE = 64


def _tiled_normal(seed: int, stream: int, offset, shape) -> np.ndarray:
    """Standard normal float32 noise of the global field at ``offset`` (one RNG per fixed 64-voxel tile).

    The same voxel gets the same value whatever block asks for it, so eager and
    chunked generation agree.
    """
    offset = tuple(int(o) for o in offset)
    shape = tuple(int(s) for s in shape)
    out = np.empty(shape, np.float32)
    ranges = [range(o // _TILE, (o + s - 1) // _TILE + 1) for o, s in zip(offset, shape)]
    for tile in product(*ranges):
        rng = np.random.default_rng([int(seed), int(stream), *tile])
        block = rng.standard_normal((_TILE,) * len(shape), dtype=np.float32)
        src, dst = [], []
        for t, o, s in zip(tile, offset, shape):
            lo, hi = max(t * _TILE, o), min((t + 1) * _TILE, o + s)
            src.append(slice(lo - t * _TILE, hi - t * _TILE))
            dst.append(slice(lo - o, hi - o))
        out[tuple(dst)] = block[tuple(src)]
    return out


# --- missing wedge ------------------------------------------------------------------------------

def _wedge_keep(shape, tilt: float) -> np.ndarray:
    """rfftn-layout mask of the Fourier coefficients a ±tilt series around y measures."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    keep = np.abs(kz) <= math.tan(math.radians(tilt)) * np.abs(kx) + 1e-9
    return np.broadcast_to(keep, (shape[0], shape[1], shape[2] // 2 + 1))


def missing_wedge_filter(volume: np.ndarray, tilt: float = 60.0) -> np.ndarray:
    """Zero the Fourier coefficients a single-axis tilt series (axis y, ±``tilt`` degrees) misses.

    A coefficient ``(kz, ky, kx)`` is kept when ``|kz| <= tan(tilt) * |kx|``: the
    beam directions reach ±tilt from z in the x-z plane, so the wedge of
    half-angle ``90 - tilt`` around the z axis of Fourier space is missing.

    Examples
    --------
    >>> v = missing_wedge_filter(np.random.default_rng(0).normal(size=(16, 16, 16)), 60)
    >>> v.shape, v.dtype
    ((16, 16, 16), dtype('float32'))
    """
    v = np.asarray(volume, dtype=np.float32)
    if tilt is None or tilt >= 90:
        return v.copy()
    f = fft.rfftn(v)  # complex64 for float32 input: half numpy's memory
    f *= _wedge_keep(v.shape, tilt)
    return fft.irfftn(f, s=v.shape, overwrite_x=True).astype(np.float32, copy=False)


# --- tomogram -----------------------------------------------------------------------------------

_MEMBRANE_THICK = 1.0  # half-thickness (voxels) of the unlabeled vesicle membranes


def _place(rng, shape, halves, radii, n, *, max_tries, taken_pos=None, taken_rad=None):
    """Random non-overlapping integer centres, rejection-sampled in batches against a cKDTree.

    ``halves[i]`` keeps candidate ``i`` fully inside the volume and ``radii[i]`` is its
    exclusion radius: two accepted centres are at least ``radii[i] + radii[j]`` apart.
    Candidates come from ``halves``/``radii`` in order (cycled); returns accepted indices and
    centres (z, y, x).
    """
    shape = np.asarray(shape)
    pos = [] if taken_pos is None else [np.asarray(taken_pos, float).reshape(-1, 3)]
    rad = [] if taken_rad is None else [np.asarray(taken_rad, float).ravel()]
    acc_idx, acc_pos = [], []
    tried = done = 0
    m = len(halves)
    while done < n and tried < max_tries:
        k = int(min(max(2 * (n - done), 64), 200_000, max_tries - tried))
        cand = (np.arange(tried, tried + k) % m)
        tried += k
        h = halves[cand]
        hi = shape[None, :] - 1 - h[:, None]
        ok = np.all(hi >= h[:, None], axis=1)
        c = np.floor(rng.random((k, 3)) * (np.maximum(hi - h[:, None], 0) + 1)).astype(np.int64) + h[:, None]
        r = radii[cand]
        if pos:
            ppos, prad = np.concatenate(pos), np.concatenate(rad)
            if len(ppos):
                tree = cKDTree(ppos)
                for i, nb in enumerate(tree.query_ball_point(c, r + prad.max())):
                    if ok[i] and nb:
                        d = np.linalg.norm(ppos[nb] - c[i], axis=1)
                        if np.any(d < r[i] + prad[nb]):
                            ok[i] = False
        sel = np.flatnonzero(ok)
        if len(sel) > 1:
            pairs = cKDTree(c[sel]).query_pairs(2 * r[sel].max(), output_type="ndarray")
            if len(pairs):
                i, j = sel[pairs[:, 0]], sel[pairs[:, 1]]
                lo, hi_ = np.minimum(i, j), np.maximum(i, j)
                clash = np.linalg.norm(c[lo] - c[hi_], axis=1) < r[lo] + r[hi_]
                lo, hi_ = lo[clash], hi_[clash]
                order = np.argsort(hi_, kind="stable")
                for a, b in zip(lo[order], hi_[order]):  # greedy in candidate order
                    if ok[a] and ok[b]:
                        ok[b] = False
        sel = np.flatnonzero(ok)[: n - done]
        done += len(sel)
        acc_idx.append(cand[sel])
        acc_pos.append(c[sel])
        pos.append(c[sel].astype(float))
        rad.append(r[sel])
    idx = np.concatenate(acc_idx) if acc_idx else np.zeros(0, int)
    cen = np.concatenate(acc_pos) if acc_pos else np.zeros((0, 3), int)
    return idx, cen


class _TomoPlan:
    """The objects and membranes of a phantom tomogram; hands each block the ones that touch it."""

    def __init__(self, shape, specs, objects, membranes, contrast, membrane_contrast):
        self.shape = shape
        self.specs = specs            # ((name, size), ...)
        self.objects = objects        # float array n x 7: label, z, y, x, phi, psi, the
        self.membranes = membranes    # float array m x 4: z, y, x, radius
        self.contrast = contrast
        self.membrane_contrast = membrane_contrast
        self.halves = np.array([_half(s) for _, s in specs])

    def subset(self, offset, bshape):
        """(objects, membranes) whose bounding boxes touch the block."""
        lo, hi = np.asarray(offset), np.asarray(offset) + np.asarray(bshape)
        o = self.objects
        h = self.halves[o[:, 0].astype(int) - 1][:, None] if len(o) else np.zeros((0, 1))
        c = o[:, 1:4]
        oi = np.all((c + h >= lo) & (c - h < hi), axis=1)
        mb = self.membranes
        r = np.ceil(mb[:, 3:4] + _MEMBRANE_THICK + 1)
        mi = np.all((mb[:, :3] + r >= lo) & (mb[:, :3] - r < hi), axis=1)
        return o[oi], mb[mi]


def _render_block(plan_small, offset, bshape, *, density=True, labels=True):
    """Particle and membrane density (float32, times the contrasts) and labels (uint8) of one block."""
    specs, contrast, membrane_contrast, objs, mems = plan_small
    offset = np.asarray(offset, int)
    bshape = tuple(int(s) for s in bshape)
    dens = np.zeros(bshape if density else (1, 1, 1), np.float32)
    lab = np.zeros(bshape if labels else (1, 1, 1), np.uint8)
    for row in objs:
        k = int(row[0])
        name, size = specs[k - 1]
        rot = _rotate_float(_template(name, size), row[4], row[5], row[6])
        corner = row[1:4].astype(int) - offset - rot.shape[0] // 2  # template voxel D // 2 lands on it
        if density:
            stamp(dens, contrast * rot, corner, how="add")
        if labels:
            stamp(lab, np.round(rot) == 1, corner, value=k)
    for zc, yc, xc, r in (mems if density else ()):
        c = np.array([zc, yc, xc]) - offset
        ext = int(math.ceil(r + _MEMBRANE_THICK + 1))
        lo = np.maximum(np.floor(c - ext).astype(int), 0)
        hi = np.minimum(np.ceil(c + ext + 1).astype(int), bshape)
        if np.any(lo >= hi):
            continue
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2, dtype=np.float32)
        sdf = np.abs(d - r) - _MEMBRANE_THICK
        dens[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += membrane_contrast * np.clip(0.5 - sdf, 0, 1)
    return dens, lab


def _gauss_scale(sigma: float) -> float:
    """Factor that gives gaussian-filtered unit white noise (3D) unit variance."""
    return float((2 * sigma * math.sqrt(math.pi)) ** 1.5)


def _gaussian(block, sigma):
    return ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=_TRUNCATE)


_TRUNCATE = 3.0  # gaussian kernel radius in sigmas (the blockwise margin depends on it)


def phantom_tomogram(shape=(128, 256, 256), classes=None, *, n_objects=None, density=0.15, snr=1.0,
                     missing_wedge=60.0, voxel_size=10.0, background=0.2, background_sigma=4.0,
                     membranes=None, contrast=-1.0, min_gap=1.0, seed=0, chunks=None, tomo=0):
    """A cryo-ET-like phantom tomogram with its object list and label map.

    Particles of several procedurally defined shapes (see :data:`SHAPES`) sit at
    random non-overlapping positions with uniformly random orientations, among
    unlabeled membrane vesicles, on a correlated background; white noise is
    added at the given SNR and the whole volume is missing-wedge filtered.

    Parameters
    ----------
    shape : tuple of int
        ``(z, y, x)`` volume size in voxels.
    classes : int, list or dict, optional
        The first N shapes of :data:`SHAPES` (default 5: sphere, ellipsoid,
        shell, rod, dumbbell), or a list of shape names or ``(name, size)`` pairs,
        or ``{name: size}``; size is the radius in voxels of the shape's
        bounding sphere. Class label k is the k-th entry.
    n_objects : int, optional
        Number of particles; by default from ``density``. Fewer are returned
        (with a warning) if they do not fit.
    density : float
        Fraction of the volume covered by the particles' bounding spheres, when
        ``n_objects`` is not given.
    snr : float or None
        Signal-to-noise ratio, defined as ``var(signal) / var(noise)``, where the
        signal is particles + membranes + background and the noise is white,
        both *before* the missing-wedge filter. The signal variance is computed
        from the object list (template voxel counts), not measured, so that
        chunked and eager generation use the same noise level. ``None`` or
        ``inf``: no noise.
    missing_wedge : float or None
        Tilt range ±degrees of a single-axis tilt series around y (see
        :func:`missing_wedge_filter`); ``None`` disables the filter.
    voxel_size : float
        Å per voxel, stored in ``objects.attrs["voxel_size"]``.
    background : float
        Standard deviation of the correlated background (gaussian-filtered
        noise), relative to a particle contrast of 1.
    background_sigma : float
        Correlation length (gaussian sigma, voxels) of the background.
    membranes : int, optional
        Number of unlabeled spherical membrane vesicles (clutter); default one
        per 4 Mvoxel (none when the smallest side is below 48).
    contrast : float
        Particle density value. Negative (default) makes particles dark, as in
        cryo-ET reconstructions; labels do not depend on it.
    min_gap : float
        Minimum gap (voxels) between the bounding spheres of two particles.
    seed : int
        Everything is a deterministic function of the seed and the parameters.
    chunks : int or tuple, optional
        Return dask arrays with these chunks, generated block by block; nothing
        ever holds the whole volume. Labels and the noise-free particle density
        are exactly the same as without chunks; the background and noise too
        (they are drawn per fixed 64-voxel tile, so independent of chunking,
        and each block filters the background with a 3-sigma margin).
        Only the missing-wedge filter is approximate: each block is filtered
        with a margin of 16 voxels, not the whole volume at once. Every block is
        one task with no dependencies (it renders its own margin), so computing
        or writing one chunk costs one task.
    tomo : str or int
        Value of the ``tomo`` column.

    Returns
    -------
    volume : numpy.ndarray or dask.array.Array
        float32 ``[z, y, x]``.
    objects : pandas.DataFrame
        One row per particle: ``tomo, class_label, x, y, z, phi, psi, the, size,
        obj_id`` with x, y, z the centre voxel (integers stored as float), angles
        in degrees (module doc), ``size`` the voxel count of the class template
        (the rotated mask may differ by a few voxels). ``attrs["voxel_size"]``
        and ``attrs["classes"] = {label: name}``.
    labels : numpy.ndarray or dask.array.Array
        uint8 ``[z, y, x]``: 0 background (membranes included), k where a
        particle of class k is (its template rotated by :func:`rotate_template`).

    Examples
    --------
    >>> vol, obj, lab = phantom_tomogram((32, 64, 64), classes=3, seed=1)
    >>> vol.shape, lab.dtype, list(obj.columns[:5])
    ((32, 64, 64), dtype('uint8'), ['tomo', 'class_label', 'x', 'y', 'z'])
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueProblem(f"shape must be three positive sizes (z, y, x), got {shape}")
    specs = _class_specs(classes)
    if snr is not None and not snr > 0:
        raise ValueProblem(f"snr must be positive (or None for no noise), got {snr}")
    nvox = float(np.prod(shape))
    ss = np.random.SeedSequence([int(seed), 3])
    rng_place, rng_angles, rng_mem = (np.random.default_rng(s) for s in ss.spawn(3))

    # membranes first (large), then particles around them
    if membranes is None:
        membranes = int(round(nvox / 4e6)) if min(shape) >= 48 else 0
    mem = np.zeros((0, 4))
    if membranes:
        rmax = min(30.0, min(shape) / 2 - 4)
        mr = rng_mem.uniform(min(12.0, rmax), rmax, int(membranes))
        mh = np.ceil(mr + _MEMBRANE_THICK + 1).astype(int)
        mi, mc = _place(rng_mem, shape, mh, mr + _MEMBRANE_THICK + 1 + min_gap / 2, int(membranes),
                        max_tries=50 * int(membranes))
        mem = np.column_stack([mc, mr[mi]]) if len(mi) else mem

    sizes = np.array([s for _, s in specs])
    halves = np.array([_half(s) for _, s in specs])
    if n_objects is None:
        mean_vol = float(np.mean(4 / 3 * np.pi * (sizes + 0.5) ** 3))
        n_objects = int(round(density * nvox / mean_vol))
    n_objects = int(n_objects)
    ncls = len(specs)
    # equal class quotas, the largest shapes placed first so that small ones do not crowd them out
    quota = np.full(ncls, n_objects // ncls)
    quota[rng_place.permutation(ncls)[: n_objects - quota.sum()]] += 1
    taken_pos, taken_rad = mem[:, :3], mem[:, 3] + _MEMBRANE_THICK + 1 + min_gap / 2
    labels_k, cens = [], []
    for k in sorted(range(ncls), key=lambda k: -sizes[k]):
        if not quota[k]:
            continue
        rk = sizes[k] + 0.5 + min_gap / 2
        _, c = _place(rng_place, shape, np.array([halves[k]]), np.array([rk]), int(quota[k]),
                      max_tries=int(quota[k]) * 25 + 1000, taken_pos=taken_pos, taken_rad=taken_rad)
        labels_k.append(np.full(len(c), k + 1))
        cens.append(c)
        taken_pos = np.concatenate([taken_pos, c])
        taken_rad = np.concatenate([taken_rad, np.full(len(c), rk)])
    labels_k = np.concatenate(labels_k) if labels_k else np.zeros(0, int)
    cen = np.concatenate(cens) if cens else np.zeros((0, 3), int)
    n = len(labels_k)
    if n < n_objects:
        log.warning("placed only %d of %d objects in %s: the volume is too crowded", n, n_objects, shape)
    phi, psi, the = _random_angles(rng_angles, n)
    objects = np.column_stack([labels_k, cen, phi, psi, the]).astype(float) if n else np.zeros((0, 7))

    counts = {k: int(_template(nm, s).sum()) for k, (nm, s) in enumerate(specs, 1)}
    df = pd.DataFrame({
        "tomo": [tomo] * n,
        "class_label": labels_k.astype(int),
        "x": cen[:, 2].astype(float), "y": cen[:, 1].astype(float), "z": cen[:, 0].astype(float),
        "phi": phi, "psi": psi, "the": the,
        "size": np.array([counts[k] for k in labels_k], dtype=int),
        "obj_id": np.arange(n, dtype=int),
    })
    df.attrs["voxel_size"] = float(voxel_size)
    df.attrs["classes"] = {k: nm for k, (nm, _) in enumerate(specs, 1)}

    # noise level from the expected signal variance (same for eager and chunked output)
    s1 = float(sum(counts[int(k)] for k in labels_k)) * contrast
    s2 = float(sum(counts[int(k)] for k in labels_k)) * contrast ** 2
    mcon = 0.8 * contrast
    for r in mem[:, 3]:
        area = 4 * np.pi * r * r
        s1 += area * 2 * _MEMBRANE_THICK * mcon
        s2 += area * (2 * _MEMBRANE_THICK - 1 + 2 / 3) * mcon ** 2
    var_signal = background ** 2 + max(s2 / nvox - (s1 / nvox) ** 2, 0.0)
    noise_std = 0.0 if snr is None or not np.isfinite(snr) else math.sqrt(var_signal / snr)
    log.info("phantom %s: %d objects, %d membranes, signal var %.4g, noise std %.4g", shape, n, len(mem),
             var_signal, noise_std)

    plan = _TomoPlan(shape, specs, objects, mem, contrast, mcon)
    tilt = None if missing_wedge is None or missing_wedge >= 90 else float(missing_wedge)
    params = _VolumeParams(seed, background * _gauss_scale(background_sigma) if background else 0.0,
                           float(background_sigma), noise_std, tilt, shape)
    if chunks is None:
        o, m = plan.subset((0, 0, 0), shape)
        dens, lab = _render_block((plan.specs, contrast, mcon, o, m), (0, 0, 0), shape)
        return _finish_volume(dens, (0, 0, 0), params), df, lab
    chunks = da.core.normalize_chunks(chunks, shape, dtype=np.float32)
    token = (plan.shape, plan.specs, plan.objects, plan.membranes, contrast, params.__dict__)

    def vol_args(off, bsh):
        lo, hi = params.extended(off, bsh)
        return (plan.specs, contrast, mcon) + plan.subset(lo, hi - lo) + (params,)

    vol = _blockwise(_tomo_volume_block, vol_args, chunks, ("volume",) + token, np.float32)
    lab = _blockwise(_tomo_label_block, lambda off, bsh: (plan.specs, plan.subset(off, bsh)[0]), chunks,
                     ("labels",) + token, np.uint8)
    return vol, df, lab


_WEDGE_MARGIN = 16  # overlap (voxels) of the blockwise missing-wedge filter


class _VolumeParams:
    """Background, noise and wedge settings, and the margin a block needs around it."""

    def __init__(self, seed, bg_scale, bg_sigma, noise_std, tilt, shape):
        self.seed, self.bg_scale, self.bg_sigma = int(seed), float(bg_scale), float(bg_sigma)
        self.noise_std, self.tilt, self.shape = float(noise_std), tilt, tuple(shape)
        m = int(math.ceil(_TRUNCATE * bg_sigma)) if bg_scale else 0
        if tilt is not None:
            m += _WEDGE_MARGIN
        self.margin = m

    def extended(self, offset, bshape):
        lo = np.maximum(np.asarray(offset) - self.margin, 0)
        hi = np.minimum(np.asarray(offset) + np.asarray(bshape) + self.margin, self.shape)
        return lo, hi


def _tomo_volume_block(args, offset, bshape):
    """One block of the phantom volume, computed on its own from a margin around it.

    Particles, membranes, background and noise are exact (the background filter
    sees 4 sigma of margin, so it matches filtering the whole volume); the
    missing wedge is applied to the block plus ``_WEDGE_MARGIN`` voxels and
    cropped, which approximates filtering the whole volume.
    """
    specs, contrast, mcon, objs, mems, p = args
    offset = np.asarray(offset, int)
    bshape = np.asarray(bshape, int)
    lo, hi = p.extended(offset, bshape)
    ext = tuple(int(v) for v in hi - lo)
    vol, _ = _render_block((specs, contrast, mcon, objs, mems), lo, ext, labels=False)
    vol = _finish_volume(vol, lo, p)
    crop = tuple(slice(int(a), int(a + n)) for a, n in zip(offset - lo, bshape))
    return np.ascontiguousarray(vol[crop])


def _finish_volume(vol, lo, p):
    """Add background and noise to the particle density of the region at ``lo``, then the wedge."""
    if p.bg_scale:
        vol += p.bg_scale * _gaussian(_tiled_normal(p.seed, 1, lo, vol.shape), p.bg_sigma)
    if p.noise_std:
        vol += p.noise_std * _tiled_normal(p.seed, 2, lo, vol.shape)
    if p.tilt is not None:
        vol = missing_wedge_filter(vol, p.tilt)
    return vol


def _tomo_label_block(args, offset, bshape):
    specs, objs = args
    return _render_block((specs, 0.0, 0.0, objs, np.zeros((0, 4))), offset, bshape, density=False)[1]


def _blockwise(render, block_args, chunks, token, dtype):
    """A dask array with one independent ``render(args, offset, shape)`` task per block (the ops painter).

    ``block_args(offset, shape)`` is called here, at graph construction, so that every
    task carries only what its block needs (the objects that touch it). Tasks have no
    dependencies, so computing one block (``array[region].compute()``) runs one task.
    """
    return blockwise(render, chunks, lambda idx, off, shp: block_args(off, shp), name="phantom", token=token,
                     dtype=dtype)


# --- TIRF movie ---------------------------------------------------------------------------------

class _MoviePlan:
    """Emitters of a phantom movie, one row per emitter per frame, and the cell footprint."""

    def __init__(self, shape, emit, cell, bleach):
        self.shape = shape
        self.emit = emit   # float n x 7: t, y, x, amplitude, sigma, label radius (-1: none), label
        self.cell = cell   # (cy, cx, ay, ax, angle, texture blobs m x 4: y, x, sigma, weight)
        self.bleach = bleach

    def subset(self, offset, bshape):
        e = self.emit
        lo, hi = np.asarray(offset), np.asarray(offset) + np.asarray(bshape)
        reach = np.maximum(4 * e[:, 4], e[:, 5]) + 1
        keep = ((e[:, 0] >= lo[0]) & (e[:, 0] < hi[0])
                & (e[:, 1] + reach >= lo[1]) & (e[:, 1] - reach < hi[1])
                & (e[:, 2] + reach >= lo[2]) & (e[:, 2] - reach < hi[2]))
        return e[keep], self.cell, self.bleach, self.shape[0]


def _footprint(cell, y, x):
    """Cell footprint in [0, 1] (a soft ellipse with a smooth texture) at pixel coordinates."""
    cy, cx, ay, ax, ang, blobs = cell
    ca, sa = math.cos(ang), math.sin(ang)
    u = ((y - cy) * ca + (x - cx) * sa) / ay
    v = (-(y - cy) * sa + (x - cx) * ca) / ax
    rho = np.sqrt(u * u + v * v)
    f = 1.0 / (1.0 + np.exp((rho - 1.0) * 12.0))
    tex = np.zeros(np.broadcast_shapes(np.shape(y), np.shape(x)), np.float32)
    for by, bx, bs, bw in blobs:
        tex += bw * np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * bs * bs))
    return (f * (1.0 + tex)).astype(np.float32)


def _render_movie_block(args, offset, bshape, *, intensity=True, labels=True):
    """Noise-free intensity (float32) and labels (uint8) of one [t, y, x] block."""
    emit, cell, bleach, nt = args
    t0, y0, x0 = (int(o) for o in offset)
    bt, by, bx = (int(s) for s in bshape)
    yy = np.arange(y0, y0 + by, dtype=np.float32)
    xx = np.arange(x0, x0 + bx, dtype=np.float32)
    tt = np.arange(t0, t0 + bt, dtype=np.float32)
    if intensity:
        fp = _footprint(cell, yy[:, None], xx[None, :])
        img = (0.1 + 0.4 * fp[None] * np.exp(-tt / bleach)[:, None, None]).astype(np.float32)
    else:
        img = np.zeros((1, 1, 1), np.float32)
    lab = np.zeros((bt, by, bx), np.uint8)
    if len(emit):
        order = np.argsort(emit[:, 0], kind="stable")
        emit = emit[order]
        ti = emit[:, 0].astype(int) - t0
        starts = np.searchsorted(ti, np.arange(bt + 1))
        for f in range(bt):
            e = emit[starts[f]:starts[f + 1]]
            if not len(e):
                continue
            if intensity:
                gy = np.exp(-(yy[None, :] - e[:, 1:2]) ** 2 / (2 * e[:, 4:5] ** 2)).astype(np.float32)
                gx = np.exp(-(xx[None, :] - e[:, 2:3]) ** 2 / (2 * e[:, 4:5] ** 2)).astype(np.float32)
                img[f] += (gy * e[:, 3:4].astype(np.float32)).T @ gx
            if not labels:
                continue
            # labels: discs of radius e[:, 5], events (2) drawn after spots (1) so they win
            for row in e[np.argsort(e[:, 6], kind="stable")]:
                r = row[5]
                if r < 0:
                    continue
                cy, cx = row[1] - y0, row[2] - x0
                a0, b0 = int(math.floor(cy - r)), int(math.floor(cx - r))
                dy = np.arange(a0, int(math.ceil(cy + r)) + 1)[:, None] - cy
                dx = np.arange(b0, int(math.ceil(cx + r)) + 1)[None, :] - cx
                stamp(lab[f], dy * dy + dx * dx <= r * r, (a0, b0), value=int(row[6]))
    return img, lab


def _movie_block(args, offset, bshape):
    sub, seed, noise_std = args
    img = _render_movie_block(sub, offset, bshape, labels=False)[0]
    if noise_std:
        img += noise_std * _tiled_normal(seed, 11, offset, bshape)
    return img


def _movie_label_block(args, offset, bshape):
    return _render_movie_block(args[0], offset, bshape, intensity=False)[1]


def _brownian(rng, n, start, y, x, step, shape):
    """Reflected random walks: (n, 2) positions from the start position."""
    d = rng.normal(0.0, step, (n, 2))
    d[0] = 0.0
    p = np.cumsum(d, axis=0) + [y, x]
    for ax, size in ((0, shape[0]), (1, shape[1])):
        lo, hi = 2.0, size - 3.0
        span = hi - lo
        q = np.mod(p[:, ax] - lo, 2 * span)
        p[:, ax] = lo + np.where(q > span, 2 * span - q, q)
    return p


def phantom_movie(shape=(300, 256, 256), *, n_spots=None, n_events=None, seed=0, snr=4.0, voxel_size=100.0,
                  spot_sigma=1.3, diffusion=0.3, event_amplitude=2.5, chunks=None, tomo=0,
                  return_tracks=False):
    """A TIRF-like movie of diffusing vesicles and exocytosis events, with ground truth.

    The movie is float32 intensity in arbitrary units, indexed ``[t, y, x]``: a
    dim offset (0.1) plus a cell footprint (a soft textured ellipse, up to about
    0.4 + texture, slowly photobleaching), diffusing spots (gaussian PSF of
    ``spot_sigma`` pixels, peak amplitude 0.7-1.3, Brownian motion with
    ``diffusion`` px²/frame, each alive for a random span of frames), and
    exocytosis events: at a random place in the cell a spot brightens over two
    frames to ``event_amplitude`` (±20%), then spreads (sigma² grows by 1
    px²/frame) and fades (× exp(-dt/6) on top of the spreading) until it falls
    below 5% of its peak, about 8 frames in all. White gaussian noise
    of standard deviation ``1 / snr`` is added, so ``snr`` is the ratio of a
    unit spot's peak amplitude to the noise standard deviation (the usual
    definition in single-particle tracking).

    Parameters
    ----------
    shape : tuple of int
        ``(t, y, x)``: frames and image size.
    n_spots, n_events : int, optional
        Number of diffusing spots (default one per 1300 px² of image) and of
        exocytosis events (default one per 2 Mpx of movie, at least 1).
    seed : int
        The output is a deterministic function of the seed and parameters.
    snr : float or None
        Spot peak amplitude / noise std; ``None``: no noise.
    voxel_size : float
        Pixel size in Å (100 nm TIRF pixels are 1000 Å; the default 100 Å keeps the
        object-list conventions of the tomograms; set the real value when it matters).
    chunks : int or tuple, optional
        Return dask arrays built block by block; labels and the noise-free
        movie are identical to the eager ones, and so is the noise (drawn per
        fixed tile), so the lazy movie equals the eager one.
    return_tracks : bool
        Also return a DataFrame of the spot trajectories, one row per spot per
        frame: ``track_id, t, x, y, amplitude``.

    Returns
    -------
    movie : numpy.ndarray or dask.array.Array
        float32 ``[t, y, x]``.
    objects : pandas.DataFrame
        Object list (CONVENTIONS.md), ``z`` holding the frame. Class 2
        (``exocytosis``, the main ground truth): one row per event at its centre
        and its peak frame (onset = peak - 2), ``size`` = its labelled voxels.
        Class 1 (``spot``): one row per diffusing spot at its first frame and
        position, ``size`` = its number of frames. ``obj_id`` is unique; a
        spot's ``obj_id`` is its ``track_id``. Angles are absent.
    labels : numpy.ndarray or dask.array.Array
        uint8 ``[t, y, x]``: 1 within 2 px of a spot's centre, 2 within an
        event's extent (1.5 sigma + 1 px, at most 6 px, while it is above a
        tenth of its peak), 0 elsewhere.
    tracks : pandas.DataFrame
        Only with ``return_tracks=True``.

    Examples
    --------
    >>> movie, obj, lab = phantom_movie((40, 64, 64), n_events=2, seed=0)
    >>> movie.shape, sorted(obj.class_label.unique().tolist())
    ((40, 64, 64), [1, 2])
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueProblem(f"shape must be three positive sizes (t, y, x), got {shape}")
    if snr is not None and not snr > 0:
        raise ValueProblem(f"snr must be positive (or None for no noise), got {snr}")
    nt, ny, nx = shape
    rng_cell, rng_spots, rng_events = (np.random.default_rng(s) for s in
                                       np.random.SeedSequence([int(seed), 7]).spawn(3))
    if n_spots is None:
        n_spots = int(round(ny * nx / 1300))
    if n_events is None:
        n_events = max(1, int(round(nt * ny * nx / 2e6)))

    # cell footprint: a soft ellipse covering most of the field, with a smooth texture
    cell_blobs = np.column_stack([rng_cell.uniform(0, ny, 6), rng_cell.uniform(0, nx, 6),
                                  rng_cell.uniform(0.05, 0.15, 6) * max(ny, nx),
                                  rng_cell.uniform(-0.3, 0.3, 6)])
    cell = (ny / 2 + rng_cell.uniform(-0.05, 0.05) * ny, nx / 2 + rng_cell.uniform(-0.05, 0.05) * nx,
            0.42 * ny, 0.42 * nx, float(rng_cell.uniform(0, np.pi)), cell_blobs)
    bleach = 5.0 * nt

    def inside_cell(rng, k, margin):
        out = []
        for _ in range(100):
            y = rng.uniform(margin, ny - 1 - margin, 4 * k + 8)
            x = rng.uniform(margin, nx - 1 - margin, 4 * k + 8)
            ok = _footprint(cell, y, x) > 0.5
            out.extend(zip(y[ok], x[ok]))
            if len(out) >= k:
                break
        return np.array(out[:k]).reshape(-1, 2)

    # spots: Brownian tracks alive over random frame spans
    rows, tracks, emit = [], [], []
    starts = inside_cell(rng_spots, n_spots, 3)
    step = math.sqrt(2 * diffusion)
    for i, (y, x) in enumerate(starts):
        t0 = int(rng_spots.integers(-nt // 2, nt))
        length = int(max(5, rng_spots.exponential(nt / 2)))
        t0, t1 = max(t0, 0), min(t0 + length, nt)
        if t1 - t0 < 2:
            t0, t1 = max(nt - 5, 0), nt
        amp = rng_spots.uniform(0.7, 1.3)
        p = _brownian(rng_spots, t1 - t0, t0, y, x, step, (ny, nx))
        t = np.arange(t0, t1)
        emit.append(np.column_stack([t, p, np.full(len(t), amp), np.full(len(t), spot_sigma),
                                     np.full(len(t), 2.0), np.full(len(t), 1)]))
        tracks.append(pd.DataFrame({"track_id": i, "t": t, "x": p[:, 1], "y": p[:, 0], "amplitude": amp}))
        rows.append((1, p[0, 1], p[0, 0], float(t0), t1 - t0, i))

    # exocytosis events, apart from each other in space-time
    ev = []
    cand = inside_cell(rng_events, 20 * n_events + 20, 8)
    for y, x in cand:
        if len(ev) >= n_events:
            break
        tpk = int(rng_events.integers(2, max(nt - 8, 3)))
        if any(abs(tpk - e[0]) < 15 and math.hypot(y - e[1], x - e[2]) < 12 for e in ev):
            continue
        ev.append((tpk, y, x, event_amplitude * rng_events.uniform(0.8, 1.2)))
    if len(ev) < n_events:
        log.warning("placed only %d of %d exocytosis events in %s", len(ev), n_events, shape)
    for j, (tpk, y, x, amp) in enumerate(ev):
        frames = []
        for dt in (-2, -1):
            frames.append((tpk + dt, amp * (3 + dt) / 3, spot_sigma))
        dt = 0
        while True:
            sig2 = spot_sigma ** 2 + 1.0 * dt
            a = amp * spot_sigma ** 2 / sig2 * math.exp(-dt / 6.0)
            if a < 0.05 * amp or dt > 40:
                break
            frames.append((tpk + dt, a, math.sqrt(sig2)))
            dt += 1
        fr = np.array([f for f in frames if 0 <= f[0] < nt])
        # labelled while above a tenth of the peak; fainter tail frames are drawn but unlabelled (-1)
        lrad = np.where(fr[:, 1] >= 0.1 * amp, np.minimum(1.5 * fr[:, 2] + 1, 6.0), -1.0)
        emit.append(np.column_stack([fr[:, 0], np.full(len(fr), y), np.full(len(fr), x), fr[:, 1], fr[:, 2],
                                     lrad, np.full(len(fr), 2)]))
        size = int(sum(_disc_count(y, x, r, ny, nx) for r in lrad if r >= 0))
        rows.append((2, x, y, float(tpk), size, n_spots + j))
    emit = np.concatenate(emit) if emit else np.zeros((0, 7))

    df = pd.DataFrame(rows, columns=["class_label", "x", "y", "z", "size", "obj_id"])
    df = df.astype({"class_label": int, "x": float, "y": float, "z": float, "size": int, "obj_id": int})
    df.insert(0, "tomo", [tomo] * len(df))
    df = df.sort_values("obj_id", ignore_index=True)
    df.attrs["voxel_size"] = float(voxel_size)
    df.attrs["classes"] = {1: "spot", 2: "exocytosis"}

    plan = _MoviePlan(shape, emit, cell, bleach)
    noise_std = 0.0 if snr is None or not np.isfinite(snr) else 1.0 / snr
    if chunks is None:
        sub = plan.subset((0, 0, 0), shape)
        movie = _movie_block((sub, seed, noise_std), (0, 0, 0), shape)
        lab = _movie_label_block((sub, seed, noise_std), (0, 0, 0), shape)
    else:
        chunks = da.core.normalize_chunks(chunks, shape, dtype=np.float32)
        token = ("movie", shape, emit, cell, bleach, seed, noise_std)
        movie = _blockwise(_movie_block, lambda o, b: (plan.subset(o, b), seed, noise_std), chunks,
                           token, np.float32)
        lab = _blockwise(_movie_label_block, lambda o, b: (plan.subset(o, b), seed, noise_std), chunks,
                         token + ("labels",), np.uint8)
    out = (movie, df, lab)
    if return_tracks:
        tr = pd.concat(tracks, ignore_index=True) if tracks else pd.DataFrame(
            columns=["track_id", "t", "x", "y", "amplitude"])
        out += (tr,)
    return out


def _disc_count(y, x, r, ny, nx):
    """Pixels of the disc of radius r around (y, x), clipped to the image (as the renderer draws it)."""
    a0, a1 = max(int(math.floor(y - r)), 0), min(int(math.ceil(y + r)) + 1, ny)
    b0, b1 = max(int(math.floor(x - r)), 0), min(int(math.ceil(x + r)) + 1, nx)
    dy = np.arange(a0, a1)[:, None] - y
    dx = np.arange(b0, b1)[None, :] - x
    return int((dy * dy + dx * dx <= r * r).sum())
