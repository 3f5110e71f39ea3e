"""Benchmarks for agentloop: our engine and agent loop against baselines, measured interleaved (A/B rounds)."""
