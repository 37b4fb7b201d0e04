-- Relationships (0070-0074, issue 18).
--
-- A new consent category, `relationships`: it holds no signal of its own and gates links between
-- users derived from the networks and homes they share (docs/invariants.md#9). A link needs this
-- consent, and consent to the category it is derived from, on both ends.
ALTER TABLE consent_events DROP CONSTRAINT consent_events_category_check;
ALTER TABLE consent_events ADD CONSTRAINT consent_events_category_check CHECK (category IN
    ('location','connectivity','device_health','energy','presence','climate','usage',
     'relationships'));
