-- Snapshots keep every feature of their feature set (hearth/vectors.py): a withdrawal used to
-- drop the withdrawn category's keys, so clients saw vectors of different shapes. Put those
-- keys back as null cells with the reason the purge now writes.
UPDATE feature_snapshots s
   SET vector = s.vector || missing.cells
  FROM (SELECT s2.user_id, s2.as_of, s2.feature_set_version,
               jsonb_object_agg(d.name, '{"value": null, "coverage": 0.0, "reason": "consent_withdrawn"}'::jsonb)
                   AS cells
          FROM feature_snapshots s2
          JOIN feature_definitions d ON d.feature_set_version = s2.feature_set_version
         WHERE NOT s2.vector ? d.name
         GROUP BY s2.user_id, s2.as_of, s2.feature_set_version) missing
 WHERE s.user_id = missing.user_id
   AND s.as_of = missing.as_of
   AND s.feature_set_version = missing.feature_set_version;
