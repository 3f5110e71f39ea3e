"""Benchmarks for agentloop: our engine and agent loop against baselines, in interleaved A/B rounds."""
