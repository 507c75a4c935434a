"""Slice-wise (2D / 2.5D) inference and training, as in EMAN2 and Ais.

Inference
    Each z slice (with ``k`` neighbours each side for 2.5D models) is resampled
    to the network's pixel size (``scipy.ndimage.zoom``), cut into overlapping
    ``box_size`` tiles, each tile normalised to mean 0 / std 1, predicted in
    batches, blended back with a tapered weight (so tile borders, where the
    network sees least context, count least) and resampled to the tomogram's
    pixel size. :func:`predict_block` does this for one block of slices; it is
    the per-block function of the distributed path: :func:`segment_slices`
    maps it over z-slabs of whole slices (with ``k`` slices of halo), so the
    xy tiling never meets a block seam.

Training
    :func:`train_slices` fits a model from sparse 2D annotations: positive
    tiles with masks and negative (empty) tiles, each positive copied
    ``n_copies`` times under random rotations and flips, negatives sampled to
    match (Ais' scheme). :func:`sample_tiles` cuts such tiles from annotated
    slices.

Workers load each model once per process from its archive path (a
per-process cache), so no task pickles a Keras model.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from scipy.ndimage import rotate, zoom

from .._log import get_logger
from ..errors import ShapeError, ValueProblem
from ._cache import archive_model
from .archive import FeatureModel, read_archive_info, save_archive
from .registry import ensure_registered, user_file

log = get_logger(__name__)

_TMPDIR = None


def cached_model(ref) -> FeatureModel:
    """The model for ``ref`` (see :func:`model_ref`), loaded once per process
    (:func:`tomochunk.nn._cache.archive_model`; kept for old callers)."""
    return archive_model(ref)


def planning_info(ref):
    """The :class:`~tomochunk.nn.archive.ModelInfo` that planning needs (context, outputs, threshold,
    title), read from the archive's record without building the network, so that a client does not
    import TensorFlow (8 s per command on 2 cores). An Ais ``.scnm`` records no input shape: it is
    loaded (once per process), as the workers do.

    Examples
    --------
    >>> from tomochunk.nn.archive import new_model
    >>> planning_info(new_model("unet2d", box_size=32, title="membrane")).title
    'membrane'
    """
    if isinstance(ref, FeatureModel):
        return ref.info
    path, code = ref if isinstance(ref, tuple) else (ref, None)
    info = read_archive_info(path)
    if info.input_shape is None:
        return cached_model(ref).info
    ensure_registered(info.architecture, code, path)  # refuse an architecture the archive names, up front
    return info


def model_ref(model):
    """A cheap, picklable reference to ``model``: its archive path (saved to a temp archive if needed),
    or ``(path, code_file)`` for a model whose architecture comes from a file the user allowed
    (``load_archive(path, allow_code=FILE)``), so that workers rebuild it from that file only."""
    global _TMPDIR
    if isinstance(model, (str, os.PathLike)):
        path = str(Path(model).resolve())
        code = user_file(read_archive_info(path).architecture)  # registered here from a file
        return (path, code) if code else path
    if isinstance(model, tuple) and len(model) == 2:
        return str(Path(model[0]).resolve()), str(Path(model[1]).resolve())
    if not isinstance(model, FeatureModel):
        raise ValueProblem("models must be archive paths or FeatureModel objects (tomochunk.nn.archive)")
    code = model.info.code or user_file(model.info.architecture)  # a file this process was given
    if model.info.source and Path(model.info.source).exists() and not model.info.source.endswith(".part"):
        path = str(Path(model.info.source).resolve())
        return (path, code) if code else path
    if _TMPDIR is None:
        _TMPDIR = tempfile.mkdtemp(prefix="tomochunk-models-")
        atexit.register(shutil.rmtree, _TMPDIR, True)
    path = Path(_TMPDIR) / f"{id(model)}-{model.info.title}.tcm".replace(os.sep, "_")
    save_archive(model, path, overwrite=True)
    model.info.source = str(path)
    return (str(path), code) if code else str(path)


# --- tiling ------------------------------------------------------------------

def _starts(n, box, stride):
    if n <= box:
        return [0]
    s = list(range(0, n - box + 1, stride))
    if s[-1] != n - box:
        s.append(n - box)
    return s


def _window(box, stride):
    """Tapered 2D blending weight: 1 in the centre, ramping down over the overlap to a small floor."""
    ramp = max(1, box - stride)
    i = np.arange(box)
    w1 = np.clip(np.minimum(i + 1, box - i) / ramp, 0.05, 1.0)
    return np.outer(w1, w1).astype(np.float32)


def _norm_tiles(t):
    mu = t.mean(axis=(1, 2), keepdims=True)
    sd = t.std(axis=(1, 2), keepdims=True)
    sd[sd == 0] = 1.0
    return (t - mu) / sd


def _fg_channels(out, n_classes):
    """Foreground probability channels: the sigmoid map(s), or softmax without background."""
    return out if n_classes == 1 else out[..., 1:]


def predict_block(block, model, *, pixel_size=None, context=None, batch_size=32, trim=None):
    """Predict foreground probabilities for a block of whole slices.

    Parameters
    ----------
    block : ndarray
        ``[z, y, x]`` slices. With ``trim`` = ``k`` the first and last ``k``
        slices are context only (a halo) and get no output.
    model : str, Path or FeatureModel
        Archive path (loaded once per process) or a loaded model.
    pixel_size : float, optional
        Å per pixel of ``block``; with the model's ``info.pixel_size`` this sets
        the resampling factor. ``None``: no resampling.
    context : int, optional
        Neighbouring slices each side fed as channels (default: the model's).
    trim : int, optional
        Halo slices at each end of ``block`` (default ``context``); missing
        neighbours at the ends are mirrored.

    Returns
    -------
    ndarray
        ``[c, z, y, x]`` float32, one channel per foreground class.

    Examples
    --------
    >>> probs = predict_block(slab, "membrane.tcm", pixel_size=10.0)  # doctest: +SKIP
    """
    fm = cached_model(model)
    info = fm.info
    k = info.context if context is None else int(context)
    trim = k if trim is None else int(trim)
    block = np.asarray(block, np.float32)
    if block.ndim != 3:
        raise ShapeError(f"predict_block takes [z, y, x] slices, got shape {block.shape}")
    nz, ny, nx = block.shape
    zs = range(trim, nz - trim)
    f = 1.0
    if pixel_size and info.pixel_size:
        f = float(pixel_size) / float(info.pixel_size)
        if abs(f - 1.0) < 0.01:
            f = 1.0
    box = int(info.box_size)
    stride = max(1, int(round(box * (1.0 - min(max(info.overlap, 0.0), 0.9)))))
    win = _window(box, stride)
    idx = np.arange(-k, k + 1)
    n_out = info.n_classes if info.n_classes == 1 else info.n_classes - 1
    out = np.empty((n_out, len(zs), ny, nx), np.float32)
    for oz, z in enumerate(zs):
        # neighbours beyond the block ends are mirrored edge-inclusive, as dask's "reflect" halo
        src = z + idx
        src = np.where(src < 0, -src - 1, src)
        src = np.where(src > nz - 1, 2 * nz - 1 - src, src).clip(0, nz - 1)
        img = np.moveaxis(block[src], 0, -1)                       # (y, x, 2k+1)
        if f != 1.0:
            img = zoom(img, (f, f, 1), order=1)
        h, w = img.shape[:2]
        ph, pw = max(0, box - h), max(0, box - w)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        H, W = img.shape[:2]
        pos = [(a, b) for a in _starts(H, box, stride) for b in _starts(W, box, stride)]
        acc = np.zeros((H, W, n_out), np.float32)
        wsum = np.zeros((H, W, 1), np.float32)
        for i in range(0, len(pos), batch_size):
            chunk = pos[i:i + batch_size]
            tiles = np.stack([img[a:a + box, b:b + box] for a, b in chunk])
            if info.normalize == "tile":
                tiles = _norm_tiles(tiles)
            pred = np.asarray(fm.model.predict_on_batch(tiles), np.float32)
            pred = _fg_channels(pred, info.n_classes)
            for (a, b), p in zip(chunk, pred):
                acc[a:a + box, b:b + box] += p * win[..., None]
                wsum[a:a + box, b:b + box] += win[..., None]
        prob = (acc / wsum)[:h, :w]
        if f != 1.0:
            prob = zoom(prob, (ny / h, nx / w, 1), order=1)
            prob = _fit(prob, ny, nx)
        out[:, oz] = np.moveaxis(prob, -1, 0)
    return np.clip(out, 0.0, 1.0, out=out)


def _fit(a, ny, nx):
    """Crop or edge-pad a resampled slice to exactly (ny, nx)."""
    a = a[:ny, :nx]
    if a.shape[0] < ny or a.shape[1] < nx:
        a = np.pad(a, ((0, ny - a.shape[0]), (0, nx - a.shape[1]), (0, 0)), mode="edge")
    return a


def segment_slices(volume, model, *, pixel_size=None, slab=None, batch_size=32):
    """Lazy slice-wise segmentation of a whole tomogram: ``[c, z, y, x]`` foreground probabilities.

    The volume is cut into z-slabs of whole slices (``slab`` slices each, plus
    the model's context as a halo) and :func:`predict_block` runs on each slab
    as one Dask task; compute it on any scheduler (a distributed client:
    models are loaded once per worker process from their archives).

    Parameters
    ----------
    volume : xarray.DataArray, dask or numpy array
        ``[z, y, x]`` tomogram.
    model : str, Path or FeatureModel
        Archive path, or a model (saved to a temporary archive for the workers).
    pixel_size : float, optional
        Å per voxel (default: ``volume.attrs["voxel_size"]``).
    slab : int, optional
        Slices per task (default: about 64 MB of float32 per slab).

    Returns
    -------
    xarray.DataArray
        Lazy ``[c, z, y, x]`` float32 probabilities, one channel per foreground
        class (``c`` holds the class names), like :func:`tomochunk.nn.segment.segment`.

    Examples
    --------
    >>> probs = segment_slices(open_volume("t.mrc"), "membrane.tcm")  # doctest: +SKIP
    >>> probs[0].max().compute()  # doctest: +SKIP
    """
    data, vs = _volume(volume)
    pixel_size = pixel_size or vs
    ref = model_ref(model)
    info = planning_info(ref)
    k = info.context
    nz, ny, nx = data.shape
    if slab is None:
        slab = max(1, min(nz, (64 << 20) // max(1, ny * nx * 4)))
    data = data.astype(np.float32).rechunk((int(slab), ny, nx))
    n_out = info.n_classes if info.n_classes == 1 else info.n_classes - 1
    if k:
        data = da.overlap.overlap(data, depth={0: k, 1: 0, 2: 0}, boundary="reflect")
    probs = data.map_blocks(predict_block, ref, pixel_size=pixel_size, trim=k, batch_size=batch_size,
                            new_axis=0, chunks=((n_out,),) + _unhalo(data.chunks, k, nz, ny, nx),
                            dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32),
                            token=f"slices-{Path(_ref_path(ref)).stem}")
    vs = float(pixel_size or 1.0)
    names = [info.classes.get(i + 1, info.title if n_out == 1 else f"class{i + 1}") for i in range(n_out)]
    return xr.DataArray(probs, dims=("c", "z", "y", "x"),
                        coords={"c": names, "z": np.arange(nz) * vs, "y": np.arange(ny) * vs,
                                "x": np.arange(nx) * vs},
                        attrs={"voxel_size": vs, "model": _ref_path(ref), "threshold": info.threshold})


def _ref_path(ref) -> str:
    """The archive path of a :func:`model_ref`."""
    return ref[0] if isinstance(ref, tuple) else ref


def _unhalo(chunks, k, nz, ny, nx):
    zc = tuple(c - 2 * k for c in chunks[0]) if k else chunks[0]
    return (zc, (ny,), (nx,))


def _volume(volume):
    vs = None
    if isinstance(volume, xr.DataArray):
        vs = volume.attrs.get("voxel_size")
        volume = volume.data
    if not isinstance(volume, da.Array):
        volume = da.from_array(np.asarray(volume))
    if volume.ndim != 3:
        raise ShapeError(f"slice-wise segmentation takes a [z, y, x] tomogram, got {volume.ndim}D")
    return volume, vs


# --- training ------------------------------------------------------------------

def sample_tiles(volume, mask, *, box, n, slices=None, context=0, positive_fraction=0.5, rng=None):
    """Cut training tiles from annotated slices: ``(tiles, masks)``.

    Parameters
    ----------
    volume, mask : array-like
        ``[z, y, x]`` tomogram and its 0/1 annotation of the feature.
    box : int
        Tile side.
    n : int
        Number of tiles.
    slices : list of int, optional
        Annotated slices to draw from (default: every slice).
    context : int
        Neighbouring slices each side as channels (2.5D models).
    positive_fraction : float
        Share of tiles centred on annotated pixels; the others are drawn at random.

    Returns
    -------
    tiles : ndarray ``[n, box, box, 2*context+1]`` float32
    masks : ndarray ``[n, box, box, 1]`` float32
    """
    rng = np.random.default_rng(rng)
    vol = np.asarray(volume, np.float32)
    msk = np.asarray(mask)
    nz, ny, nx = vol.shape
    if box > min(ny, nx):
        raise ValueProblem(f"tile size {box} is larger than the slices ({ny} x {nx})")
    slices = list(range(nz)) if slices is None else [int(s) for s in slices]
    tiles, masks = [], []
    half = box // 2
    for i in range(int(n)):
        z = slices[rng.integers(len(slices))]
        fg = np.argwhere(msk[z] > 0) if rng.random() < positive_fraction else np.empty((0, 2))
        if len(fg):
            cy, cx = fg[rng.integers(len(fg))]
            y0 = int(np.clip(cy - half + rng.integers(-half // 2, half // 2 + 1), 0, ny - box))
            x0 = int(np.clip(cx - half + rng.integers(-half // 2, half // 2 + 1), 0, nx - box))
        else:
            y0, x0 = int(rng.integers(0, ny - box + 1)), int(rng.integers(0, nx - box + 1))
        zz = np.clip(np.arange(z - context, z + context + 1), 0, nz - 1)
        tiles.append(np.moveaxis(vol[zz, y0:y0 + box, x0:x0 + box], 0, -1))
        masks.append((msk[z, y0:y0 + box, x0:x0 + box] > 0)[..., None])
    return np.stack(tiles), np.stack(masks).astype(np.float32)


def _rotate(img, angle, flip, order, cval):
    out = rotate(img, angle, axes=(0, 1), reshape=False, order=order, mode="constant", cval=cval)
    return out[:, ::-1] if flip else out


def augment_tiles(tiles, masks, *, negatives=None, n_copies=4, excess_negative=0.3, rng=None):
    """Ais-style training set: ``n_copies`` randomly rotated/flipped copies of every positive tile,
    plus negatives (rotated too) to ``(1 + excess_negative)`` times the positives' count.

    Tiles with an empty mask count as negatives. Every tile is normalised to mean 0 / std 1.
    """
    rng = np.random.default_rng(rng)
    tiles = np.asarray(tiles, np.float32)
    masks = np.asarray(masks, np.float32)
    if tiles.ndim == 3:
        tiles = tiles[..., None]
    if masks.ndim == 3:
        masks = masks[..., None]
    if tiles.shape[:3] != masks.shape[:3]:
        raise ShapeError(f"tiles {tiles.shape} and masks {masks.shape} differ in size")
    pos = masks.reshape(len(masks), -1).max(1) > 0
    neg_x = [t for t in tiles[~pos]]
    if negatives is not None:
        negatives = np.asarray(negatives, np.float32)
        neg_x += list(negatives[..., None] if negatives.ndim == 3 else negatives)
    xs, ys = [], []
    for t, m in zip(tiles[pos], masks[pos]):
        for _ in range(max(1, int(n_copies))):
            a, fl = rng.uniform(0, 360), bool(rng.integers(2))
            xs.append(_rotate(t, a, fl, 1, float(t.mean())))
            ys.append(_rotate(m, a, fl, 0, 0.0))
    n_neg = int(round(len(xs) * (1 + excess_negative))) if xs else len(neg_x)
    if neg_x:
        for i in range(n_neg):
            t = neg_x[i % len(neg_x)]
            a, fl = rng.uniform(0, 360), bool(rng.integers(2))
            xs.append(_rotate(t, a, fl, 1, float(t.mean())))
            ys.append(np.zeros(t.shape[:2] + (1,), np.float32))
    if not xs:
        raise ValueProblem("no training tiles: give positive tiles with masks and/or negative tiles")
    return _norm_tiles(np.stack(xs)), (np.stack(ys) > 0.5).astype(np.float32)


def dice_bce(y_true, y_pred):
    """Binary cross-entropy plus soft Dice (over the batch): thin, sparse features still pull the
    network towards predicting them, which plain cross-entropy does not in a brief training."""
    from keras import ops

    y_true = ops.cast(y_true, y_pred.dtype)
    eps = 1e-6
    p = ops.clip(y_pred, eps, 1 - eps)
    bce = -ops.mean(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
    inter = ops.sum(y_true * y_pred)
    dice = 1 - (2 * inter + 1) / (ops.sum(y_true) + ops.sum(y_pred) + 1)
    return bce + dice


def train_slices(model, tiles, masks, *, negatives=None, n_copies=4, excess_negative=0.3, epochs=10,
                 batch_size=16, learning_rate=1e-3, loss="dice_bce", pixel_size=None, validation_split=0.0,
                 seed=0, verbose=0):
    """Train a 2D/2.5D model from sparse tile annotations (positive tiles with masks, negative tiles).

    Parameters
    ----------
    model : FeatureModel
        From :func:`tomochunk.nn.archive.new_model` or :func:`~tomochunk.nn.archive.load_archive`
        (training continues from its weights).
    tiles : ndarray
        ``[n, box, box]`` or ``[n, box, box, channels]`` image tiles.
    masks : ndarray
        ``[n, box, box]`` 0/1 masks of the feature (all-zero masks are negatives).
    negatives : ndarray, optional
        More tiles without the feature.
    n_copies : int
        Randomly rotated and flipped copies of each positive tile.
    excess_negative : float
        Negatives per positive copy, minus one (0.3: 30 % more negatives).
    loss : {"dice_bce", "bce"} or callable
        One-feature (sigmoid) models: cross-entropy plus soft Dice (default), or
        plain cross-entropy. Softmax models use sparse categorical cross-entropy.
    pixel_size : float, optional
        Å per pixel of the tiles; recorded in ``model.info.pixel_size``.

    Returns
    -------
    keras.callbacks.History

    Examples
    --------
    >>> fm = new_model("unet2d", box_size=64, title="membrane")  # doctest: +SKIP
    >>> train_slices(fm, tiles, masks, epochs=5, pixel_size=10.0)  # doctest: +SKIP
    >>> save_archive(fm, "membrane.tcm")  # doctest: +SKIP
    """
    import keras

    if not isinstance(model, FeatureModel):
        raise ValueProblem("train_slices needs a FeatureModel (tomochunk.nn.archive.new_model / load_archive)")
    x, y = augment_tiles(tiles, masks, negatives=negatives, n_copies=n_copies, excess_negative=excess_negative,
                         rng=seed)
    info = model.info
    ch = model.model.input_shape[-1]
    if ch is not None and x.shape[-1] != ch:
        raise ShapeError(f"tiles have {x.shape[-1]} channels, the model takes {ch}")
    if info.n_classes == 1:
        loss = {"dice_bce": dice_bce, "bce": "binary_crossentropy"}.get(loss, loss) if isinstance(loss, str) \
            else loss
        if isinstance(loss, str) and loss != "binary_crossentropy":
            raise ValueProblem(f"loss must be 'dice_bce', 'bce' or a callable, not {loss!r}")
    else:
        y = y[..., 0].astype("int32")
        loss = "sparse_categorical_crossentropy"
    keras.utils.set_random_seed(int(seed))
    model.model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    hist = model.model.fit(x, y, epochs=int(epochs), batch_size=int(batch_size), shuffle=True,
                           validation_split=validation_split, verbose=verbose)
    info.box_size = int(x.shape[1])
    if pixel_size:
        info.pixel_size = float(pixel_size)
    info.source = None          # the weights changed: a cached archive no longer matches
    log.info("trained %s on %d tiles, final loss %.4f", info.title, len(x), hist.history["loss"][-1])
    return hist
