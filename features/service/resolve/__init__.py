"""From (user, as_of) to a served vector: snapshot lookups, on-demand engine runs, rendering."""
