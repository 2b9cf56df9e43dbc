"""Certificates on the node: checks on material from the control plane, the certificate directory, the state file.

`material` (pure) names files and checks bundles before anything touches HAProxy or the disk; `files` is the only
module here that does IO (atomic writes, removals, the directory scan); `state` is the local record of what was
applied; `errors` holds the `CertsError` tree. Planning and applying live in `plan` and `reconciler`.
"""

from .errors import CertFileError, CertsError, MaterialRejected, Reason, StateError
from .material import Material, cert_file_name, check_material, leaf_fingerprint, name_from_file_name
from .state import AgentState, AppliedCert

__all__ = [
    "AgentState",
    "AppliedCert",
    "CertFileError",
    "CertsError",
    "Material",
    "MaterialRejected",
    "Reason",
    "StateError",
    "cert_file_name",
    "check_material",
    "leaf_fingerprint",
    "name_from_file_name",
]
