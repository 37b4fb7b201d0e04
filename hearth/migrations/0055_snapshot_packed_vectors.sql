-- Snapshot vectors as packed float64 columns instead of JSONB (issue 15 §3).
--
-- A training set reads 100,000 snapshots at once; a JSONB vector costs a parse per cell and
-- ~4.9 kB per row, and a float8[] costs a send call per element. A snapshot now holds:
--   vals      bytea: one big-endian IEEE 754 float64 per feature (PostgreSQL's own binary
--             float8, float8send), NaN where the value is null;
--   covs      bytea: the coverage of each feature, the same layout;
--   withheld  jsonb: {category: reason} for each category whose features are null by consent
--             ("not_consented" at as_of, "consent_withdrawn" since: hearth/vectors.py).
-- The features are in the feature set's column order: feature_definitions.name of that
-- feature_set_version sorted by code point (COLLATE "C", Python's sorted()).
-- hearth_snapshot_vector() gives a row back in the {name: cell} shape of hearth/vectors.py.

-- The names of a feature set, in column order.
CREATE FUNCTION hearth_feature_names(version text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(name ORDER BY name COLLATE "C"), '{}')
      FROM feature_definitions WHERE feature_set_version = version
$$;

-- The 0-based column positions of the features of `categories` in a feature set.
CREATE FUNCTION hearth_feature_positions(version text, categories text[]) RETURNS int[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(d.i) FILTER (WHERE d.category = ANY(categories)), '{}')
      FROM (SELECT category, (row_number() OVER (ORDER BY name COLLATE "C") - 1)::int AS i
              FROM feature_definitions WHERE feature_set_version = version) d
$$;

-- Packed float64 values (NULL elements become NaN).
CREATE FUNCTION hearth_pack_float8(vals float8[]) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(string_agg(float8send(coalesce(v, 'NaN')), ''::bytea ORDER BY i), ''::bytea)
      FROM unnest(vals) WITH ORDINALITY AS u(v, i)
$$;

-- The float64 at 0-based position `i` of packed values; NULL for NaN (a null value).
CREATE FUNCTION hearth_unpack_float8(b bytea, i int) RETURNS float8
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    bits bigint;
    e int;
    m bigint;
    v float8;
BEGIN
    IF length(b) < i * 8 + 8 OR i < 0 THEN
        RETURN NULL;
    END IF;
    bits := ('x' || encode(substring(b FROM i * 8 + 1 FOR 8), 'hex'))::bit(64)::bigint;
    e := ((bits >> 52) & 2047)::int;
    m := bits & 4503599627370495;  -- the 52 fraction bits
    IF e = 2047 THEN
        IF m <> 0 THEN
            RETURN NULL;
        END IF;
        v := 'Infinity';
    ELSIF e = 0 THEN
        v := m * power(2::float8, -1074);  -- subnormal: exact
    ELSE
        v := (1 + m * power(2::float8, -52)) * power(2::float8, e - 1023);  -- exact
    END IF;
    RETURN CASE WHEN bits < 0 THEN -v ELSE v END;
END $$;

-- Packed values with the positions in `positions` set to `v`.
CREATE FUNCTION hearth_pack_fill(b bytea, positions int[], v float8) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    p int;
    x bytea := float8send(v);
BEGIN
    FOREACH p IN ARRAY positions LOOP
        b := overlay(b PLACING x FROM p * 8 + 1 FOR 8);
    END LOOP;
    RETURN b;
END $$;

-- A snapshot as {name: {"value", "coverage"[, "reason"]}} (hearth/vectors.py).
CREATE FUNCTION hearth_snapshot_vector(version text, vals bytea, covs bytea, withheld jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_object_agg(d.name,
               jsonb_build_object('value', hearth_unpack_float8(vals, d.i),
                                  'coverage', hearth_unpack_float8(covs, d.i))
               || CASE WHEN withheld ? d.category
                       THEN jsonb_build_object('reason', withheld ->> d.category)
                       ELSE '{}'::jsonb END), '{}'::jsonb)
      FROM (SELECT name, category, (row_number() OVER (ORDER BY name COLLATE "C") - 1)::int AS i
              FROM feature_definitions WHERE feature_set_version = version) d
$$;

-- A snapshot with the features of `categories` withdrawn: null, coverage 0, and the reason
-- (strict: NULL categories give NULLs without running the body).
CREATE FUNCTION hearth_snapshot_withhold(
    version text, in_vals bytea, in_covs bytea, in_withheld jsonb, categories text[],
    OUT vals bytea, OUT covs bytea, OUT withheld jsonb)
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    positions int[] := hearth_feature_positions(version, categories);
BEGIN
    vals := hearth_pack_fill(in_vals, positions, 'NaN');
    covs := hearth_pack_fill(in_covs, positions, 0);
    withheld := in_withheld || coalesce(
        (SELECT jsonb_object_agg(x.c, 'consent_withdrawn')
           FROM (SELECT DISTINCT d.category AS c FROM feature_definitions d
                  WHERE d.feature_set_version = version AND d.category = ANY(categories)) x),
        '{}'::jsonb);
END $$;

-- Whether a snapshot still shows a feature of one of `categories` (the purge's verification).
CREATE FUNCTION hearth_snapshot_shows(
    version text, vals bytea, covs bytea, withheld jsonb, categories text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
               SELECT 1 FROM unnest(hearth_feature_positions(version, categories)) p
                WHERE substring(vals FROM p * 8 + 1 FOR 8) IS DISTINCT FROM float8send('NaN')
                   OR substring(covs FROM p * 8 + 1 FOR 8) IS DISTINCT FROM float8send(0))
        OR EXISTS (
               SELECT 1 FROM feature_definitions d
                WHERE d.feature_set_version = version AND d.category = ANY(categories)
                  AND NOT withheld ? d.category)
$$;

-- Existing JSONB vectors move to the packed columns. A version without definitions gets its
-- names from the vectors it holds (category unknown: no purge ever matched them either).
ALTER TABLE feature_snapshots
    ADD COLUMN vals bytea,
    ADD COLUMN covs bytea,
    ADD COLUMN withheld jsonb NOT NULL DEFAULT '{}';

INSERT INTO feature_definitions (name, feature_set_version, family, category, definition)
SELECT DISTINCT k.name, s.feature_set_version, 'unknown', 'unknown', '{}'::jsonb
  FROM feature_snapshots s CROSS JOIN LATERAL jsonb_object_keys(s.vector) AS k(name)
 WHERE NOT EXISTS (SELECT 1 FROM feature_definitions d
                    WHERE d.feature_set_version = s.feature_set_version)
ON CONFLICT DO NOTHING;

UPDATE feature_snapshots s
   SET vals = c.vals, covs = c.covs, withheld = c.withheld
  FROM (SELECT s2.user_id, s2.as_of, s2.feature_set_version,
               hearth_pack_float8(array_agg((s2.vector -> d.name ->> 'value')::float8
                                            ORDER BY d.name COLLATE "C")) AS vals,
               hearth_pack_float8(array_agg(coalesce((s2.vector -> d.name ->> 'coverage')::float8, 0)
                                            ORDER BY d.name COLLATE "C")) AS covs,
               coalesce(jsonb_object_agg(d.category, s2.vector -> d.name ->> 'reason')
                            FILTER (WHERE s2.vector -> d.name ? 'reason'), '{}'::jsonb) AS withheld
          FROM feature_snapshots s2
          JOIN feature_definitions d ON d.feature_set_version = s2.feature_set_version
         GROUP BY s2.user_id, s2.as_of, s2.feature_set_version) c
 WHERE s.user_id = c.user_id AND s.as_of = c.as_of
   AND s.feature_set_version = c.feature_set_version;

ALTER TABLE feature_snapshots
    DROP COLUMN vector,
    ALTER COLUMN vals SET NOT NULL,
    ALTER COLUMN covs SET NOT NULL;

COMMENT ON COLUMN feature_snapshots.vals IS
    'big-endian float64 per feature in hearth_feature_names(feature_set_version) order; NaN = null';
COMMENT ON COLUMN feature_snapshots.covs IS 'coverage per feature, the layout of vals';
COMMENT ON COLUMN feature_snapshots.withheld IS
    '{category: reason} for categories whose features are null by consent';
