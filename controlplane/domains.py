"""Customer domain names and the per-domain status machine. Pure: no IO, no clock.

A name is accepted when a CA's file validation (http-token, HTTP-01) can cover it: one fully qualified host name,
no wildcard, no IP literal, LDH labels of 1-63 octets, at most 253 octets, at least two labels, not a numeric TLD.
Upper case and IDN are accepted and stored in their canonical form (lower case, punycode A-labels).
"""

from __future__ import annotations

import enum
import ipaddress

import idna

__all__ = ["DomainStatus", "InvalidDomain", "TRANSITIONS", "can_transition", "normalize_domain"]

MAX_NAME = 253
MAX_LABEL = 63


class InvalidDomain(ValueError):
    """The name cannot be provisioned; `reason` is a stable code, the message says why in words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalize_domain(raw: str) -> str:
    """The canonical stored form, or InvalidDomain with the reason.

    Raises:
        InvalidDomain: reason in {"empty", "wildcard", "ip_literal", "too_long", "label_too_long", "bad_label",
            "invalid_character", "single_label", "numeric_tld"}.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidDomain("empty", "domain name is empty")
    name = raw.strip()
    if "*" in name:
        raise InvalidDomain("wildcard", "wildcard names cannot be validated by file (http-token / HTTP-01)")
    candidate = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        pass
    else:
        raise InvalidDomain("ip_literal", "IP addresses are not domain names")
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 4 * MAX_NAME:
        raise InvalidDomain("too_long", f"domain name longer than {MAX_NAME} characters")
    if any(c.isspace() or ord(c) < 0x21 or c in "/\\:@?#%;,\"'<>[]{}|^`=+&$!()~" for c in name):
        raise InvalidDomain("invalid_character", "domain names contain only letters, digits, hyphens and dots")
    for label in name.split("."):
        if not label:
            raise InvalidDomain("bad_label", "empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL and label.isascii():
            raise InvalidDomain("label_too_long", f"label longer than {MAX_LABEL} characters: {label[:20]}...")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        message = str(exc)
        if "too long" in message.lower():
            reason = "label_too_long" if "label" in message.lower() else "too_long"
        else:
            reason = "bad_label" if "hyphen" in message.lower() or "label" in message.lower() else "invalid_character"
        raise InvalidDomain(reason, f"not a valid host name: {message}") from None
    except UnicodeError as exc:
        raise InvalidDomain("invalid_character", f"not a valid host name: {exc}") from None
    if len(ascii_name) > MAX_NAME:
        raise InvalidDomain("too_long", f"domain name longer than {MAX_NAME} characters")
    labels = ascii_name.split(".")
    for label in labels:
        if len(label) > MAX_LABEL:
            raise InvalidDomain("label_too_long", f"label longer than {MAX_LABEL} characters")
        if not all(c.isalnum() or c == "-" for c in label):
            raise InvalidDomain("invalid_character", "domain names contain only letters, digits, hyphens and dots")
        if label.startswith("-") or label.endswith("-"):
            raise InvalidDomain("bad_label", f"label starts or ends with a hyphen: {label}")
    if len(labels) < 2:
        raise InvalidDomain("single_label", "a customer domain needs at least two labels")
    if labels[-1].isdigit():
        raise InvalidDomain("numeric_tld", "the top-level label cannot be numeric")
    return ascii_name


class DomainStatus(enum.StrEnum):
    """What an operator reads at a glance. `failed` always comes with a cause and a next retry."""

    PENDING = "pending"  # added; waiting for its first pipeline step
    ORDERING = "ordering"  # key + CSR made, order being placed with the CA
    VALIDATING = "validating"  # token published to every node, waiting for the CA to see it
    ISSUED = "issued"  # certificate stored; being delivered to the nodes
    DEPLOYED = "deployed"  # every node serves it
    RENEWING = "renewing"  # a new certificate is being ordered; the current one keeps serving
    REMOVING = "removing"  # withdrawn from the nodes; order cancelled or certificate revoked
    FAILED = "failed"  # see status_detail and next_retry_at


S = DomainStatus
TRANSITIONS: dict[DomainStatus, frozenset[DomainStatus]] = {
    S.PENDING: frozenset({S.ORDERING, S.FAILED, S.REMOVING}),
    S.ORDERING: frozenset({S.VALIDATING, S.ISSUED, S.FAILED, S.REMOVING, S.ORDERING}),
    S.VALIDATING: frozenset({S.ISSUED, S.FAILED, S.REMOVING, S.VALIDATING, S.ORDERING}),
    S.ISSUED: frozenset({S.DEPLOYED, S.FAILED, S.REMOVING, S.ISSUED}),
    S.DEPLOYED: frozenset({S.RENEWING, S.REMOVING, S.DEPLOYED, S.ISSUED}),
    S.RENEWING: frozenset({S.ORDERING, S.VALIDATING, S.ISSUED, S.FAILED, S.REMOVING}),
    S.FAILED: frozenset({S.PENDING, S.ORDERING, S.VALIDATING, S.ISSUED, S.RENEWING, S.REMOVING, S.FAILED}),
    S.REMOVING: frozenset({S.REMOVING}),
}


def can_transition(current: DomainStatus, new: DomainStatus) -> bool:
    return new in TRANSITIONS[current]
