"""Training targets: ``tomochunk.targets.spheres`` and ``tomochunk.targets.shapes``.

See :mod:`tomochunk.ops.targets` for the rules (placement, rotation, overlap).
"""

from .ops.targets import *  # noqa: F401,F403
from .ops.targets import __all__  # noqa: F401
