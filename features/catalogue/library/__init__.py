"""The feature library: one module per family (docs/features.md). Importing it registers every
feature."""

from features.catalogue.library import (  # noqa: F401  (import for registration side effects)
    coverage,
    infrastructure,
    mobility,
    phone_care,
    relationships,
    residential,
    routine,
)
from features.catalogue.library.base import SPECS, FeatureSpec, Window

__all__ = ["SPECS", "FeatureSpec", "Window"]
