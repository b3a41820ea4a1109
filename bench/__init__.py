"""Benchmarks of `job`, each figure a ratio to a ceiling or a peer run beside it."""
