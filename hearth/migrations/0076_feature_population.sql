-- The population an export described (issue 17): per (as_of, feature-set version) how many users
-- it held, and per feature its 1st..99th percentiles, one row per level, from which a reason
-- code's percentile is read (features.book.population). Aggregates of at least 20 users and no
-- user id: erasure and withdrawal leave them. A later export of the same as_of replaces them.
CREATE TABLE feature_populations (
    as_of                timestamptz NOT NULL,
    feature_set_version  text NOT NULL,
    n_users              integer NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_set_version, as_of)
);

CREATE TABLE feature_population (
    as_of                timestamptz NOT NULL,
    feature_set_version  text NOT NULL,
    feature              text NOT NULL,
    level                smallint NOT NULL CHECK (level BETWEEN 1 AND 99),  -- percentile
    value                double precision NOT NULL,
    PRIMARY KEY (feature_set_version, as_of, feature, level),
    FOREIGN KEY (feature_set_version, as_of)
        REFERENCES feature_populations (feature_set_version, as_of) ON DELETE CASCADE
);
