"""Measurement: parameter / MAC counts and latency benchmarks."""
