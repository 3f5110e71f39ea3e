"""Bundled evaluation suites (`suites/*.jsonl`), read with importlib.resources by
`agentloop.application.learning.evaluation.load_suites`."""
