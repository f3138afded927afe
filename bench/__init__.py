"""Benchmarks beside the package (not installed): training step, end-to-end fine-tune, data-parallel
scaling, preflight. The commands are scripts/bench_*.py; the figures go into BENCHMARKS.md."""
