"""The feature catalogue: the families of feature functions (:mod:`.library`) and the
definitions derived from them (:mod:`.definitions`): names, windows, formulas, citations and
the feature-set version every vector and snapshot carries."""

from features.catalogue.definitions import (
    DEFINITIONS,
    FEATURE_SET_VERSION,
    FeatureDefinition,
    feature_name,
    sync_definitions,
)

__all__ = [
    "DEFINITIONS",
    "FEATURE_SET_VERSION",
    "FeatureDefinition",
    "feature_name",
    "sync_definitions",
]
