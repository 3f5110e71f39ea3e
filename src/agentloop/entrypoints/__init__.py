"""Ways into agentloop: the HTTP/WebSocket API (and later the CLI and web UI)."""
