-- Readings the consent gate refused (no active consent for their category), counted per day and
-- category in the same transaction as the batch they came in (issue 12 §5), so an operator can
-- see refused data after a restart, not only in one process's /metrics. Counts only: no user,
-- device or value. A message redelivered after a crash between commit and PUBACK is counted
-- again (the count is "readings refused", at least once each).
CREATE TABLE dropped_readings_daily (
    day       date NOT NULL,                      -- UTC day the batch was committed
    category  text NOT NULL,
    readings  bigint NOT NULL CHECK (readings >= 0),
    PRIMARY KEY (day, category)
);
