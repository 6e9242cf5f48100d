"""Bench: the benchmark harness behind `etl bench` and `etl tune`, one module per job (see each one's docstring)."""

from etl.bench.corpus import build_corpus
from etl.bench.report import render_bench, render_tune
from etl.bench.run import run_bench, run_tune
from etl.bench.sweep import SweepPoint, recommend

__all__ = ["SweepPoint", "build_corpus", "recommend", "render_bench", "render_tune", "run_bench", "run_tune"]
