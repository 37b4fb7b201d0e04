-- The population an export described (issue 17): per (as_of, feature-set version, feature) the
-- 1st..99th percentiles of the exported users' values, from which a reason code's percentile is
-- read (features.book.population). Aggregates of at least 20 users, no user id: erasure and
-- withdrawal leave them; a later export of the same as_of replaces them.
CREATE TABLE feature_population (
    as_of                timestamptz NOT NULL,
    feature_set_version  text NOT NULL,
    feature              text NOT NULL,
    n_users              integer NOT NULL,
    percentiles          float8[],               -- NULL: fewer than 20 values
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (as_of, feature_set_version, feature)
);
CREATE INDEX feature_population_latest ON feature_population (feature_set_version, as_of DESC);
