"""Feeding the book: bulk export of every consented user's vector, versioned models and scores
that explain themselves (docs/book.md).

:mod:`.scale` (the points scale), :mod:`.model` (a model directory: the secure model file and
its card, compiled into a linear scorecard), :mod:`.scoring` (points, probabilities and reason
codes of a matrix of applicants), :mod:`.population` (percentiles of a population at as_of),
:mod:`.vectors` (each user's vector at a date, from stored snapshots), :mod:`.files`
(resumable, checksummed Parquet parts), :mod:`.export` (``python -m features export``),
:mod:`.batch` (``python -m features score``), :mod:`.score_log` (the append-only log of every
score, docs/invariants.md#10).
"""
