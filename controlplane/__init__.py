"""The Lockstep control plane: domain registry, certificate store, provisioning, and the agents' sync API."""
