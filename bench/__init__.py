"""Benchmarks: `make bench` (python -m bench) prints one `figure=value unit` line per figure."""
