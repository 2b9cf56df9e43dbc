"""Lockstep's command line and the pieces that wire the control plane, the sidecar and HAProxy together (demo)."""
