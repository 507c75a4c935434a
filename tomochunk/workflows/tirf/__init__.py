"""TIRF exocytosis workflow: ExoDeepFinder's steps on lazy ``[t, y, x]`` movies.

The steps, in ExoDeepFinder's order (each a plain function, each a ``tomochunk tirf``
subcommand):

1. :func:`convert_movies` - every TIFF-frame folder under a parent -> OME-Zarr movies.
2. :func:`detect_spots` - a bright-spot detector (Laplacian of Gaussian + local maxima)
   that stands in for Atlas; :func:`import_spots` reads any external detector's output.
3. :func:`event_targets` - expert event annotations -> a lazy label map (a cone per event).
4. :func:`merge_annotations` - detector spots (class 1) + expert events (class 2).
5. :func:`make_dataset` - a seeded train/valid split written as a manifest.
6. :func:`train_events` / :func:`segment_movies` - the anisotropic network.
7. :func:`events_from_segmentation` - a segmentation -> an event list.

One module per step: :mod:`.convert`, :mod:`.detect`, :mod:`.annotate`, :mod:`.merge`,
:mod:`.dataset`, :mod:`.train`, :mod:`.segment`, :mod:`.events` (shared pieces in
:mod:`._common`). ``tomochunk.ops.tirf`` forwards every name here, for old imports.

Coordinates follow the conventions: object lists hold ``x, y`` in pixels and ``z`` = the
frame index; arrays are ``[t, y, x]``.
"""

from ._common import EVENT, EVENT_RADII, MOVIE_SEGMENT_PATCH, MOVIE_TRAIN_PATCH, N_CLASSES, SPOT
from .annotate import check_events, event_targets, paint_objects
from .convert import convert_movies, find_movie_folders
from .dataset import make_dataset, read_dataset
from .detect import detect_spots, import_spots, spots_from_labelmap
from .events import events_from_segmentation
from .merge import match_events, merge_annotations
from .segment import segment_movie, segment_movies
from .train import EVENT_CLASS_WEIGHTS, train_events

__all__ = ["EVENT", "EVENT_CLASS_WEIGHTS", "EVENT_RADII", "MOVIE_SEGMENT_PATCH", "MOVIE_TRAIN_PATCH", "N_CLASSES",
           "SPOT", "check_events", "convert_movies", "detect_spots", "event_targets", "events_from_segmentation",
           "find_movie_folders", "import_spots", "make_dataset", "match_events", "merge_annotations",
           "paint_objects", "read_dataset", "segment_movie", "segment_movies", "spots_from_labelmap",
           "train_events"]
