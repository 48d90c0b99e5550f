"""Helpers for tests (and benchmarks) that put the mesh under faults."""
