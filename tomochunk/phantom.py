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
``centre + R @ b`` in the tomogram. :func:`euler_matrix` builds ``R`` and
:func:`rotate_template` applies it; every rotation in this package goes
through these two functions.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product

import numpy as np
import pandas as pd

from ._log import get_logger
from .errors import ValueProblem

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
    """Half-width of the odd template cube holding a shape of this size, with room to rotate."""
    return int(math.ceil(size)) + 1


@lru_cache(maxsize=64)
def _template(name: str, size: float) -> np.ndarray:
    h = _half(size)
    z, y, x = np.mgrid[-h:h + 1, -h:h + 1, -h:h + 1].astype(np.float32)
    mask = SHAPES[name][0](x, y, z, size) <= 0
    mask.setflags(write=False)
    return mask


def class_templates(classes=None) -> dict[int, np.ndarray]:
    """Unrotated boolean masks of the phantom classes, centred in odd cubes.

    Parameters
    ----------
    classes : int, list or dict, optional
        As in :func:`phantom_tomogram`: the first N shapes of :data:`SHAPES`, or
        shape names, ``(name, size)`` pairs or ``{name: size}`` (size = radius of the
        bounding sphere in voxels).

    Returns
    -------
    dict
        ``{label: mask}``, labels from 1, each mask ``[z, y, x]`` of odd side
        ``2 * (ceil(size) + 1) + 1`` with the shape centred on the middle voxel.

    Examples
    --------
    >>> t = class_templates(["sphere", ("rod", 6)])
    >>> sorted(t), t[1].shape
    ([1, 2], (13, 13, 13))
    """
    return {k: _template(name, size).copy() for k, (name, size) in enumerate(_class_specs(classes), 1)}


def euler_matrix(phi: float, psi: float, the: float) -> np.ndarray:
    """The 3×3 rotation ``Rz(psi) @ Rx(the) @ Rz(phi)`` acting on ``(x, y, z)`` (degrees, ZXZ).

    Examples
    --------
    >>> np.allclose(euler_matrix(90, 0, 0) @ [1, 0, 0], [0, 1, 0])
    True
    """
    p, s, t = np.deg2rad([phi, psi, the])

    def rz(a):
        c, si = math.cos(a), math.sin(a)
        return np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]])

    c, si = math.cos(t), math.sin(t)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -si], [0.0, si, c]])
    return rz(s) @ rx @ rz(p)


def _rotate_float(vol: np.ndarray, phi: float, psi: float, the: float, order: int = 1) -> np.ndarray:
    from scipy import ndimage

    vol = np.asarray(vol, dtype=np.float32)
    if phi == 0 and psi == 0 and the == 0:
        return vol.copy()
    r = euler_matrix(phi, psi, the)
    # affine_transform maps output index o to input index M @ o + offset, in (z, y, x) order:
    # the input point of output voxel o is R^T (o - c) + c, with the axes reversed.
    m = r.T[::-1, ::-1]
    c = (np.array(vol.shape, dtype=float) - 1) / 2
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=order, mode="constant", cval=0.0,
                                    prefilter=order > 1)


def rotate_template(mask: np.ndarray, phi: float, psi: float, the: float, *, order: int = 1) -> np.ndarray:
    """Rotate a template about its centre voxel by the Euler angles (degrees, ZXZ; see the module doc).

    Boolean masks are interpolated linearly and thresholded at 0.5, which is
    exactly how :func:`phantom_tomogram` draws its label maps; other arrays are
    interpolated with ``order`` and returned as float32.

    Examples
    --------
    >>> rod = class_templates(["rod"])[1]
    >>> flat = rotate_template(rod, 0, 0, 90)   # the rod's z axis turned onto -y
    >>> flat.shape == rod.shape, int(flat[:, :, 9].sum()) > 0
    (True, True)
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueProblem(f"rotate_template needs a 3D array, got {mask.ndim}D")
    if mask.dtype == bool:
        return _rotate_float(mask, phi, psi, the, order=1) >= 0.5
    return _rotate_float(mask, phi, psi, the, order=order)


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
    f = np.fft.rfftn(v)
    f *= _wedge_keep(v.shape, tilt)
    return np.fft.irfftn(f, s=v.shape).astype(np.float32)


# --- tomogram -----------------------------------------------------------------------------------

_OBJ_COLS = ["class_label", "x", "y", "z", "phi", "psi", "the"]
_MEMBRANE_THICK = 1.0  # half-thickness (voxels) of the unlabeled vesicle membranes


def _place(rng, shape, halves, radii, n, *, max_tries, taken_pos=None, taken_rad=None):
    """Random non-overlapping integer centres, rejection-sampled in batches against a cKDTree.

    ``halves[i]`` keeps candidate ``i`` fully inside the volume and ``radii[i]`` is its
    exclusion radius: two accepted centres are at least ``radii[i] + radii[j]`` apart.
    Candidates come from ``halves``/``radii`` in order (cycled); returns accepted indices and
    centres (z, y, x).
    """
    from scipy.spatial import cKDTree

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
    """Everything needed to render any block of a phantom tomogram (picklable, small)."""

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


def _render_block(plan_small, offset, bshape):
    """Density (float32, particles and membranes, before contrast) and labels (uint8) of one block."""
    specs, contrast, membrane_contrast, objs, mems = plan_small
    offset = np.asarray(offset, int)
    bshape = tuple(int(s) for s in bshape)
    dens = np.zeros(bshape, np.float32)
    lab = np.zeros(bshape, np.uint8)
    for row in objs:
        k = int(row[0])
        name, size = specs[k - 1]
        rot = _rotate_float(_template(name, size), row[4], row[5], row[6])
        h = rot.shape[0] // 2
        c = row[1:4].astype(int) - offset
        dst, src = [], []
        for ax in range(3):
            lo, hi = c[ax] - h, c[ax] + h + 1
            a, b = max(lo, 0), min(hi, bshape[ax])
            if a >= b:
                break
            dst.append(slice(a, b))
            src.append(slice(a - lo, b - lo))
        else:
            piece = rot[tuple(src)]
            dens[tuple(dst)] += contrast * piece
            lab[tuple(dst)][piece >= 0.5] = k
    for zc, yc, xc, r in mems:
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
    from scipy import ndimage

    return ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=4.0)


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
        (they are drawn per fixed 64-voxel tile, so independent of chunking).
        Only the missing-wedge filter is approximate: each block is filtered
        with an overlap of 16 voxels, not the whole volume at once.
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
    bg_scale = background * _gauss_scale(background_sigma)
    tilt = None if missing_wedge is None or missing_wedge >= 90 else float(missing_wedge)

    if chunks is None:
        dens, lab = _render_block((specs, contrast, mcon, objects, mem), (0, 0, 0), shape)
        vol = dens
        if background:
            vol += bg_scale * _gaussian(_tiled_normal(seed, 1, (0, 0, 0), shape), background_sigma)
        if noise_std:
            vol += noise_std * _tiled_normal(seed, 2, (0, 0, 0), shape)
        if tilt is not None:
            vol = missing_wedge_filter(vol, tilt)
        return vol, df, lab
    vol, lab = _lazy_tomogram(plan, shape, chunks, seed, bg_scale, background_sigma, noise_std, tilt)
    return vol, df, lab


def _lazy_tomogram(plan, shape, chunks, seed, bg_scale, bg_sigma, noise_std, tilt):
    import dask.array as da

    chunks = da.core.normalize_chunks(chunks, shape, dtype=np.float32)
    dens, lab = _blockwise_pair(plan, chunks)
    vol = dens
    if bg_scale:
        noise = _lazy_normal(seed, 1, chunks)
        depth = int(math.ceil(4 * bg_sigma))  # dask rechunks if a chunk is smaller
        vol = vol + bg_scale * noise.map_overlap(_gaussian, depth=depth, boundary="none", sigma=bg_sigma,
                                                 dtype=np.float32)
    if noise_std:
        vol = vol + noise_std * _lazy_normal(seed, 2, chunks)
    if tilt is not None:
        depth = tuple(min(16, s) for s in shape)
        vol = vol.map_overlap(missing_wedge_filter, depth=depth, boundary="none", tilt=tilt, dtype=np.float32)
    return vol, lab


def _offsets(chunks):
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]


def _blockwise_pair(plan, chunks):
    """Two dask arrays (density, labels) from one render task per block, each given only its objects."""
    import operator

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    tok = tokenize(plan.shape, plan.specs, plan.objects, plan.membranes, plan.contrast, chunks)
    rname, dname, lname = f"phantom-render-{tok}", f"phantom-density-{tok}", f"phantom-labels-{tok}"
    offs = _offsets(chunks)
    rdsk, ddsk, ldsk = {}, {}, {}
    for idx in product(*[range(len(c)) for c in chunks]):
        off = tuple(int(offs[a][i]) for a, i in enumerate(idx))
        bsh = tuple(int(chunks[a][i]) for a, i in enumerate(idx))
        o, m = plan.subset(off, bsh)
        rdsk[(rname,) + idx] = (_render_block, (plan.specs, plan.contrast, plan.membrane_contrast, o, m),
                                list(off), list(bsh))
        ddsk[(dname,) + idx] = (operator.getitem, (rname,) + idx, 0)
        ldsk[(lname,) + idx] = (operator.getitem, (rname,) + idx, 1)
    graph_d = HighLevelGraph({rname: rdsk, dname: ddsk}, {rname: set(), dname: {rname}})
    graph_l = HighLevelGraph({rname: rdsk, lname: ldsk}, {rname: set(), lname: {rname}})
    dens = da.Array(graph_d, dname, chunks, meta=np.empty((0, 0, 0), np.float32))
    lab = da.Array(graph_l, lname, chunks, meta=np.empty((0, 0, 0), np.uint8))
    return dens, lab


def _normal_block(seed, stream, block_info=None):
    info = block_info[None]
    off = [lo for lo, _ in info["array-location"]]
    return _tiled_normal(seed, stream, off, info["chunk-shape"])


def _lazy_normal(seed, stream, chunks):
    import dask.array as da

    return da.map_blocks(_normal_block, seed, stream, chunks=chunks, dtype=np.float32,
                         name=f"phantom-noise-{seed}-{stream}-" + da.core.tokenize(chunks))
