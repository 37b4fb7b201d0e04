-- Per raw hypertable, the time before which retention (collector retention run) may have
-- dropped raw rows. Rollups never rebuild a bucket older than it: a late reading there would
-- replace the bucket's aggregate with one computed from that reading alone (issue 11 §6).
CREATE TABLE raw_retention_horizons (
    hypertable  text PRIMARY KEY,
    horizon     timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Retention runs before this migration are in the audit log.
INSERT INTO raw_retention_horizons (hypertable, horizon)
SELECT dropped.key, max((a.details ->> 'cutoff')::timestamptz)
  FROM audit_log a, jsonb_each_text(a.details -> 'chunks_dropped') dropped
 WHERE a.action = 'retention' AND dropped.value::integer > 0
 GROUP BY dropped.key;
