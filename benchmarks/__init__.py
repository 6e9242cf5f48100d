"""Benchmarks: the baselines and the harness that compares etl against them."""
