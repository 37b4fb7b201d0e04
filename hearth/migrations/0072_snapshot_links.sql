-- The link ends a stored snapshot's relationship features were derived from (issue 18): one row
-- per (snapshot, other person, category). Links are computed per as_of from network sightings
-- and never stored on their own; a snapshot keeps the ends it used so that a withdrawal
-- (relationships, or the category a link comes from) or an erasure at the other end can find
-- and withhold every stored feature derived from that person (hearth/admin/purge.py), after
-- which no row naming them remains. The other person is a keyed hash (hearth.pseudonym, domain
-- link_end), never their id: a data-subject export shows that links exist, not to whom.
CREATE TABLE snapshot_links (
    user_id              text NOT NULL,
    as_of                timestamptz NOT NULL,
    feature_set_version  text NOT NULL,
    link_ref             text NOT NULL,
    link_category        text NOT NULL,   -- relationships, connectivity or location
    PRIMARY KEY (user_id, as_of, feature_set_version, link_ref, link_category)
);
CREATE INDEX snapshot_links_ref ON snapshot_links (link_ref, link_category);
