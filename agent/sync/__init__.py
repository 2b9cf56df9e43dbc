"""The agent's half of the sync protocol (docs/sync-protocol.md): wire models, HTTP client, and the sync loop."""
