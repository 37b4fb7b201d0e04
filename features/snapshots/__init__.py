"""Stored feature vectors: :mod:`.codec` (the one JSON encoder and decoder of vectors),
:mod:`.store` (the statements on ``feature_snapshots``), :mod:`.materialize` (computing and
storing them for every user as of a date)."""
