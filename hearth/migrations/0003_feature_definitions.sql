-- The feature catalogue as data, written by the feature engine (features.definitions) when it
-- materialises. Purges use it to strip a withdrawn category's features from stored snapshots
-- without importing the feature code.
CREATE TABLE feature_definitions (
    name                 text NOT NULL,
    feature_set_version  text NOT NULL,
    family               text NOT NULL,
    category             text NOT NULL,
    definition           jsonb NOT NULL,
    PRIMARY KEY (feature_set_version, name)
);
