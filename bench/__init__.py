"""Benchmarks beside the package (not installed): training step, end-to-end fine-tune, data-parallel
scaling, preflight, and the generated two-voice interview the data-prep benchmark and tests share.
The commands are scripts/bench_*.py; the figures go into BENCHMARKS.md."""
