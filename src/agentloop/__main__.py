"""`python -m agentloop` runs the CLI."""

from agentloop.entrypoints.cli import main

main()
