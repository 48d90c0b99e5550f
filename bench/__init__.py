"""Benchmarks and external baselines for kanbanmesh (not part of the installed package)."""
