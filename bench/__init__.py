"""Benchmarks run by `make bench` (`python -m bench`): each figure beside its reference."""
