"""Benchmarks of the suite, each run as ``python -m benchmarks.<name>``."""
