"""Benchmarks: each prints JSON figures with a baseline measured in the same run."""
