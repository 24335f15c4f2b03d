"""Layers shared by several backbone families (no family imports another)."""
