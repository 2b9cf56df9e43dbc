"""The Lockstep sidecar: one process per HAProxy node.

It answers HAProxy's SPOE lookups for CA validation tokens and keeps the node's certificates in step with the
control plane. Its pieces talk to the control plane only through the documented sync protocol (docs/sync-protocol.md).
"""
