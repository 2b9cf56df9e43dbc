"""Three HAProxy + agent nodes (127.0.0.2–4), a control plane process and the CertCentral simulator as its CA: the
installation the provisioning tests and the time-to-HTTPS benchmark run against. Everything is stopped by id."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from certcentral_sim import SimConfig, SimulatorThread

from .cpproc import ControlPlaneProcess
from .edge import Edge
from .net import free_port, split
from .pki import TestPki

NODE_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclasses.dataclass
class Cluster:
    sim: SimulatorThread
    cp: ControlPlaneProcess
    edges: list[Edge]
    root_file: Path  # the simulator's root: what a client verifies customer certificates with
    routed: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # the simulator's whole DNS map

    def route(self, *names: str) -> None:
        """Point the simulator's DNS for these names at every node's port 80 (it picks one per fetch); names routed
        before stay routed (the simulator's map is replaced as a whole)."""
        self.routed.update({name: [e.layout.http_bind for e in self.edges] for name in names})
        self.sim.set_resolve(self.routed)

    def verify_everywhere(self, name: str) -> None:
        ctx = ssl.create_default_context(cafile=str(self.root_file))
        for edge in self.edges:
            with socket.create_connection(split(edge.https), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:  # chain + name verified, or it raises
                    assert tls.getpeercert() is not None


@contextlib.contextmanager
def running_cluster(root: Path, pki: TestPki, *, haproxy_version: str = "2.6", sim_config: SimConfig | None = None,
                    **control_plane: Any) -> Iterator[Cluster]:
    """Start the simulator, three nodes and the control plane (`control_plane`: more ControlPlaneProcess
    arguments, e.g. pipeline, issuer_extra, extra); stop them all on exit."""
    sim = (SimulatorThread(config=sim_config) if sim_config is not None else SimulatorThread()).start()
    edges: list[Edge] = []
    cp: ControlPlaneProcess | None = None
    try:
        tokens = {ip: os.urandom(16).hex() for ip in NODE_IPS}
        # Edges first (their ports go into the control plane's node list); agents retry until it is up.
        cp_port = free_port()
        edges = [Edge(haproxy_version, root / f"n{i}", pki, backend_port=free_port(), node=f"edge-{i}", ip=ip,
                      control_plane_url=f"http://127.0.0.1:{cp_port}", bearer_token=tokens[ip])
                 for i, ip in enumerate(NODE_IPS)]
        cp = ControlPlaneProcess(
            root / "cp", issuer_url=sim.url, issuer_api_key=sim.api_key, port=cp_port,
            nodes=[{"id": e.node_id, "http": e.layout.http_bind, "https": e.layout.https_bind,
                    "bearer_token": tokens[ip]} for e, ip in zip(edges, NODE_IPS)],
            **control_plane)
        cp.start()
        for e in edges:
            e.start()
        root_file = root / "sim-root.pem"
        root_file.write_text(sim.root_pem)
        yield Cluster(sim, cp, edges, root_file)
    finally:
        for e in edges:
            e.close()
        if cp is not None:
            cp.stop()
        sim.stop()
