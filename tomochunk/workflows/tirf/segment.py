"""Segmenting movies with the anisotropic network: lazy scores, and label maps written per movie."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

from ..._log import get_logger
from ..._names import unique_names
from ...errors import ValueProblem
from ...io.omezarr import is_complete
from ...io.volume import write_volume
from ...nn.segment import labelmap, segment
from ...ops.normalize import normalize as _normalize
from ._common import MOVIE_SEGMENT_PATCH, _as_tyx, _default_normalize, _load_movie_model, _movie_array

log = get_logger(__name__)


def segment_movie(movie, model, *, patch_size=MOVIE_SEGMENT_PATCH, normalize=None, **kw):
    """Lazy ``[c, t, y, x]`` class scores of a movie (background, spot, exocytosis).

    :func:`tomochunk.nn.segment.segment` with movie defaults: 160-sided patches and
    ExoDeepFinder ``.h5`` weights loaded into the anisotropic network.

    Parameters
    ----------
    normalize : {"percentile", "percentile+meanstd"}, optional
        ``"percentile"``: every frame mapped so its 1st/99th percentiles go to 0/1, what
        ExoDeepFinder trains and segments on. ``"percentile+meanstd"``: then the whole movie
        to zero mean, unit variance, matching :func:`train_events` (whose patches are
        standardised). Default: ``"percentile"`` for ``.h5`` (ExoDeepFinder) weights, else
        ``"percentile+meanstd"``.
    **kw
        Passed on to :func:`tomochunk.nn.segment.segment` (``crop``, ``blend``, ``client``, ...).

    Examples
    --------
    >>> scores = segment_movie("cell1.zarr", "model/model_final.keras")  # doctest: +SKIP
    """
    if normalize is None:
        normalize = _default_normalize(model)
    if normalize not in ("percentile", "percentile+meanstd"):
        raise ValueProblem(f"unknown normalize {normalize!r} (expected 'percentile' or 'percentile+meanstd')")
    data, _ = _movie_array(movie)
    data = _normalize(data, method="percentile")
    scores = segment(data, _load_movie_model(model), patch_size=patch_size,
                     normalize="meanstd" if normalize == "percentile+meanstd" else None, **kw)
    return scores.rename({"z": "t"}) if "z" in scores.dims else scores


def segment_movies(movies, model, outdir, *, patch_size=MOVIE_SEGMENT_PATCH, overwrite=False, scores=False, **kw):
    """Segment movies into ``outdir/<movie>_segmentation.zarr`` label maps (0, 1 spot, 2 exocytosis).

    Complete outputs are skipped unless ``overwrite``; ``scores=True`` also writes the
    float class scores (``<movie>_scores.zarr``). ``<movie>`` is the movie's name by the one
    rule (:func:`tomochunk._names.unique_names`): movies of the same name in different folders
    get their folder's name in front.

    Returns
    -------
    dict
        ``{movie: output path}``.

    Examples
    --------
    >>> segment_movies(["cell1.zarr", "cell2.zarr"], "model.keras", "seg/")  # doctest: +SKIP
    """
    if isinstance(movies, (str, Path)):
        movies = [movies]
    names = unique_names(movies)  # cell1/movie.zarr and cell2/movie.zarr: cell1_movie, cell2_movie
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if kw.get("normalize") is None:  # decided by the model file, before it is loaded
        kw["normalize"] = _default_normalize(model)
    net = _load_movie_model(model)
    done = {}
    for m in movies:
        stem = names[os.fspath(m)]
        dst = outdir / f"{stem}_segmentation.zarr"
        done[str(m)] = dst
        if dst.exists() and not overwrite and is_complete(dst):
            log.info("skip complete %s", dst)
            continue
        sc = segment_movie(m, net, patch_size=patch_size, **kw)
        # Compute the scores once, in one graph, into a Zarr array: write_volume computes region
        # by region, and a region that cuts a segmentation block recomputes the whole block
        # (2.2x the time at 128 frames, more on long movies). Label map and score map are then
        # read back from it.
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}_scores_", dir=outdir))
        try:
            arr = sc.data.astype(np.float16 if scores else np.float32)
            arr = arr.rechunk((arr.shape[0], min(64, arr.shape[1])) + arr.shape[2:])
            da.to_zarr(arr, str(tmp / "scores.zarr"), overwrite=True)
            sc = sc.copy(data=da.from_zarr(str(tmp / "scores.zarr")))
            if scores:
                write_volume(sc, outdir / f"{stem}_scores.zarr", levels=1, overwrite=True)
            lab = labelmap(sc)
            write_volume(_as_tyx(getattr(lab, "data", lab).astype(np.uint8)), dst, levels=1, overwrite=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("segmented %s -> %s", m, dst)
    return done
