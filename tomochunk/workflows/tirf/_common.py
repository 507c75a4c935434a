"""Shared pieces of the TIRF workflow: movie arrays, object lists, the class labels and defaults."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ...errors import MissingError, ShapeError
from ...io.objects import read_objects
from ...io.volume import open_volume
from ...nn.models import load_model

#: Disk radius per frame of an exocytosis event's cone, from the annotated frame on.
#: A disk of radius r holds the pixels with ``dy² + dx² <= r²`` (r = 4: 49 px, r = 2: 13 px);
#: radius 0 is the single centre pixel. This is ExoDeepFinder's mask: a disk of radius 4 on the
#: annotated frame, radius 2 on the next one, then one pixel.
EVENT_RADII = (4, 2, 0)

#: Class labels of the merged training targets.
SPOT, EVENT = 1, 2

#: Training patches for movies ``(t, y, x)``: the anisotropic network pools only in y and x,
#: so t may be any size; y and x must be multiples of 4.
MOVIE_TRAIN_PATCH = (16, 48, 48)
#: Segmentation patch side: ExoDeepFinder's default (160 frames x 160 x 160 pixels).
MOVIE_SEGMENT_PATCH = 160
N_CLASSES = 3  # background, bright spot, exocytosis


def _movie_array(movie):
    """(dask array, DataArray-or-None, source path or None) for a path, numpy, dask or xarray movie."""
    path = None
    if isinstance(movie, (str, Path)):
        path = Path(movie)
        movie = open_volume(movie)
    if isinstance(movie, xr.DataArray):
        data = movie.data
        path = path or movie.attrs.get("source")
    else:
        data = movie
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        data = da.from_array(data, chunks=(min(64, data.shape[0]),) + data.shape[1:] if data.ndim == 3 else -1)
    if data.ndim != 3:
        raise ShapeError(f"a movie must be [t, y, x], got {data.ndim}D", path)
    return data, path


def _as_tyx(data, name="labels"):
    return xr.DataArray(data, dims=("t", "y", "x"), name=name, attrs={"voxel_size": 1.0})


def _movie_chunks(shape, chunks=None):
    if chunks is not None:
        return chunks
    return (min(64, shape[0]), min(512, shape[1]), min(512, shape[2]))


def _objects(objects, what="objects"):
    """A DataFrame from a DataFrame or an object-list file, plus the file (or None)."""
    if isinstance(objects, pd.DataFrame):
        return objects, None
    path = Path(objects)
    if not path.exists():
        raise MissingError(f"no such {what} file", path)
    return read_objects(path), path


def _empty_objects():
    df = pd.DataFrame({"class_label": pd.Series([], dtype=int), "x": pd.Series([], dtype=float),
                       "y": pd.Series([], dtype=float), "z": pd.Series([], dtype=float)})
    df.attrs["voxel_size"] = 1.0
    return df


def _points(df, label):
    if len(df) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.uint8)
    pts = np.stack([np.rint(df[c].to_numpy(float)) for c in ("z", "y", "x")], axis=1).astype(np.int64)
    if label is None:
        labels = df["class_label"].to_numpy().astype(np.uint8) if "class_label" in df else np.ones(len(df), np.uint8)
    else:
        labels = np.full(len(df), label, np.uint8)
    return pts, labels


def _shape_of(shape):
    if hasattr(shape, "shape") and not isinstance(shape, tuple):
        return tuple(int(s) for s in shape.shape)
    if isinstance(shape, (str, Path)):
        return tuple(_movie_array(shape)[0].shape)
    return tuple(int(s) for s in shape)


def _load_movie_model(model):
    """A Keras network from a path (``.h5``: ExoDeepFinder weights for the anisotropic net) or as is."""
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.exists():
            raise MissingError("no such model file", p)
        # ExoDeepFinder's weight files are for the (1, 2, 2)-pooling network
        return load_model(p, anisotropic=True) if p.suffix.lower() == ".h5" else load_model(p)
    return model


def _default_normalize(model) -> str:
    """ExoDeepFinder ``.h5`` weights see percentile-normalised frames; our trained models also meanstd."""
    return "percentile" if isinstance(model, (str, Path)) and str(model).lower().endswith(".h5") \
        else "percentile+meanstd"
