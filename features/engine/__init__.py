"""The point-in-time feature engine (features.engine.load until the split lands)."""
