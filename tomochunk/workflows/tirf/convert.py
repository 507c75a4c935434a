"""Every TIFF-frame folder under a parent folder -> OME-Zarr movies, in one call."""

from __future__ import annotations

from pathlib import Path

from ..._log import get_logger
from ...errors import MissingError, TomochunkError
from ...io.convert import convert
from ...io.omezarr import is_complete
from ...io.tiff import is_tiff

log = get_logger(__name__)


def find_movie_folders(parent):
    """Every folder under ``parent`` (itself included) that directly holds ``.tif/.tiff`` files, sorted."""
    parent = Path(parent)
    if not parent.is_dir():
        raise MissingError("no such folder", parent)
    out = []
    for d in sorted([parent] + [p for p in parent.rglob("*") if p.is_dir()]):
        if d.suffix.lower() == ".zarr" or any(q.suffix.lower() == ".zarr" for q in d.relative_to(parent).parents
                                              if q.name):
            continue
        if any(f.is_file() and is_tiff(f) for f in d.iterdir()):
            out.append(d)
    return out


def convert_movies(parent, outdir, *, chunks=None, levels=1, overwrite=False, ngff="0.4", on_error="raise",
                   progress=False):
    """Convert every TIFF-frame folder under ``parent`` to an OME-Zarr movie, in one call.

    Each movie folder ``parent/a/b`` becomes ``outdir/a/b.zarr`` (``parent`` itself, if it
    holds frames, becomes ``outdir/<parent name>.zarr``). Complete outputs are skipped;
    interrupted ones resume (:func:`tomochunk.convert`). Frames are checked first: a gap
    in the frame numbers raises an error naming the file after the gap.

    Parameters
    ----------
    levels : int
        Multiscale levels (movies are downsampled in y, x only). Default 1: training and
        segmentation read full resolution.
    on_error : {"raise", "skip"}
        ``"skip"`` logs bad movies and goes on; they are listed in the result as errors.

    Returns
    -------
    dict
        ``{folder: {"output": path, "status": "converted"|"skipped"|"error", "error": msg}}``.

    Examples
    --------
    >>> convert_movies("experiment/", "zarr/")  # doctest: +SKIP
    """
    parent, outdir = Path(parent), Path(outdir)
    folders = find_movie_folders(parent)
    if not folders:
        raise MissingError("no folder of TIFF frames found", parent)
    result = {}
    for folder in folders:
        rel = folder.relative_to(parent)
        dst = outdir / (str(rel) + ".zarr" if str(rel) != "." else parent.name + ".zarr")
        entry = {"output": str(dst)}
        if dst.exists() and not overwrite and is_complete(dst):
            entry["status"] = "skipped"
            log.info("skip complete %s", dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                convert(folder, dst, chunks=chunks, levels=levels, overwrite=overwrite, ngff=ngff, progress=progress)
                entry["status"] = "converted"
            except TomochunkError as exc:
                if on_error == "raise":
                    raise
                log.warning("%s", exc)
                entry.update(status="error", error=str(exc))
        result[str(folder)] = entry
    return result
