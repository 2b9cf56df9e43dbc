"""The agent's Prometheus metrics, in a registry of its own (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["AgentMetrics"]


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.certs_applied = Gauge("lockstep_agent_certificates_applied", "Certificates served as desired", registry=r)
        self.certs_pending = Gauge("lockstep_agent_certificates_pending",
                                   "Desired certificates not applied yet (waiting, retrying or rejected)", registry=r)
        self.certs_failed = Gauge("lockstep_agent_certificates_failed", "Certificates failing now, by reason",
                                  ["reason"], registry=r)
        self.cert_operations = Counter("lockstep_agent_certificate_operations", "Applied actions", ["action"],
                                       registry=r)
        self.runtime_api_errors = Counter("lockstep_agent_runtime_api_errors", "HAProxy runtime API errors",
                                          ["kind"], registry=r)
        self.verify_mismatches = Counter("lockstep_agent_verify_mismatches",
                                         "Handshakes after a commit that served another certificate", registry=r)
        self.verify_ok = Counter("lockstep_agent_verify_ok", "Handshakes after a commit that served the right one",
                                 registry=r)
        self.soonest_expiry = Gauge("lockstep_agent_soonest_expiry_timestamp_seconds",
                                    "not_after of the certificate that expires first", registry=r)
        self.sync_revision = Gauge("lockstep_agent_sync_revision", "Desired-state revision held", registry=r)
        self.sync_last_success = Gauge("lockstep_agent_sync_last_success_timestamp_seconds",
                                       "Wall time of the last successful exchange with the control plane", registry=r)
        self.sync_lag = Gauge("lockstep_agent_sync_lag_seconds",
                              "Seconds since the last successful exchange with the control plane", registry=r)
        self.sync_failures = Gauge("lockstep_agent_sync_consecutive_failures", "Failed sync attempts in a row",
                                   registry=r)
        self.sync_failures_total = Gauge("lockstep_agent_sync_failures",
                                         "Failed sync attempts since start", registry=r)
        self.identity_not_after = Gauge("lockstep_agent_identity_not_after_timestamp_seconds",
                                        "not_after of the node's certificate from the internal PKI", registry=r)
        self.identity_renew_at = Gauge("lockstep_agent_identity_renew_after_timestamp_seconds",
                                       "When the node's certificate is due for renewal", registry=r)
        self.identity_last_renewal = Gauge("lockstep_agent_identity_last_renewal_timestamp_seconds",
                                           "Wall time the node last obtained a certificate", registry=r)
        self.identity_renewals = Gauge("lockstep_agent_identity_certificates_obtained",
                                       "Certificates obtained from the internal PKI since start", registry=r)
        self.identity_failures = Gauge("lockstep_agent_identity_consecutive_failures",
                                       "Failed enrollment or renewal attempts in a row", registry=r)
        self.edge_client_not_after = Gauge("lockstep_agent_edge_client_cert_not_after_timestamp_seconds",
                                           "not_after of the client certificate HAProxy presents to backends",
                                           registry=r)
        self.access_denied = Gauge("lockstep_agent_control_plane_access_denied",
                                   "1 when the control plane refuses this node (403: removed)", registry=r)
        self.tokens = Gauge("lockstep_agent_validation_tokens", "Validation tokens held", registry=r)
        self.spoe_notifies = Gauge("lockstep_agent_spoe_notifies", "NOTIFY frames answered since start", registry=r)
        self.spoe_hits = Gauge("lockstep_agent_spoe_token_hits", "Lookups that found a current token", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
