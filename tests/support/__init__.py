"""Helpers shared by tests and benchmarks: hand-made rows, and the feature service on a port."""
