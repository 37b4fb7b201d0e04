"""The feature library: one module per family (DESIGN §6). Importing it registers every feature."""

from features.library import (  # noqa: F401  (import for registration side effects)
    coverage,
    infrastructure,
    mobility,
    phone_care,
    residential,
    routine,
)
from features.library.base import SPECS, FeatureSpec, Window

__all__ = ["SPECS", "FeatureSpec", "Window"]
