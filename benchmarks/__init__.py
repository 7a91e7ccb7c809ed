"""Benchmarks with committed results (see README.md); each script runs on its own and has --help."""
