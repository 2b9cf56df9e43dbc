"""What the control plane wants this node to serve, as last heard: the sync loop's sink.

Tokens go straight into the TokenStore the SPOE handler reads. Certificate references are kept for the
certificate reconciler (agent/certs), which is told when they change.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.sync.model import CertRef, ChangeBatch, Snapshot
from agent.tokens import TokenStore

__all__ = ["DesiredState"]


class DesiredState:
    def __init__(self, tokens: TokenStore, *, on_certificates_changed: Callable[[], None] | None = None) -> None:
        self.tokens = tokens
        self.certificates: dict[str, CertRef] = {}
        self.revision: int | None = None
        self._on_certs = on_certificates_changed

    @property
    def known(self) -> bool:
        """True once a snapshot arrived; before that an empty set means "unknown", not "serve nothing"."""
        return self.revision is not None

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.tokens.replace(snapshot.tokens)
        certs = {c.name: c for c in snapshot.certificates}
        # The first snapshot always counts: it is when the desired certificates become known at all.
        changed = certs != self.certificates or self.revision is None
        self.certificates = certs
        self.revision = snapshot.revision
        if changed and self._on_certs:
            self._on_certs()

    def on_changes(self, batch: ChangeBatch) -> None:
        certs_changed = False
        for change in batch.changes:
            if change.kind == "token":
                if change.token is not None:
                    self.tokens.put(change.token)
                else:
                    host, slash, rest = change.key.partition("/")
                    self.tokens.delete(host, slash + rest)
            else:
                certs_changed = True
                if change.certificate is not None:
                    self.certificates[change.key] = change.certificate
                else:
                    self.certificates.pop(change.key, None)
        self.revision = batch.revision
        if certs_changed and self._on_certs:
            self._on_certs()
