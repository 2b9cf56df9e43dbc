from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from controlplane.provision import ChainRejected, check_chain, make_key_and_csr, renewal_time
from lockstep.pki import issue, make_ca

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)


def test_renewal_time_is_a_fraction_of_the_lifetime() -> None:
    start = NOW
    assert renewal_time(start, start + dt.timedelta(days=90), 2 / 3) == start + dt.timedelta(days=60)
    assert renewal_time(start, start + dt.timedelta(days=10), 0.5) == start + dt.timedelta(days=5)


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_key_and_csr(key_type: str) -> None:
    key_pem, csr_pem = make_key_and_csr("shop.example.test", key_type)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["shop.example.test"]
    assert "PRIVATE KEY" in key_pem


def test_check_chain() -> None:
    root = make_ca("root", now=NOW)
    inter = make_ca("inter", now=NOW, parent=root)
    good = issue(inter, ["shop.example.test"], now=NOW)
    chain = good.cert_pem + good.chain_pem
    assert check_chain(chain, good.key_pem, "shop.example.test", now=NOW) == good.cert
    other = issue(inter, ["shop.example.test"], now=NOW)
    cases = [
        (chain, other.key_pem, "shop.example.test", "not for our key"),
        (chain, good.key_pem, "other.example.test", "does not name"),
        (good.chain_pem + good.cert_pem, good.key_pem, "shop.example.test", "not for our key"),
        (good.cert_pem + root.cert_pem, good.key_pem, "shop.example.test", "out of order"),
        ("garbage", good.key_pem, "shop.example.test", "unparsable"),
    ]
    for pem, key, name, why in cases:
        with pytest.raises(ChainRejected, match=why):
            check_chain(pem, key, name, now=NOW)
    with pytest.raises(ChainRejected, match="not valid now"):
        check_chain(chain, good.key_pem, "shop.example.test", now=NOW + dt.timedelta(days=400))


async def test_renewal_uses_ari_window_when_offered_else_the_fraction() -> None:
    import random

    from controlplane.provision import Provisioner

    root = make_ca("root", now=NOW)
    leaf = issue(root, ["shop.example.test"], now=NOW, days=90)
    window = (NOW + dt.timedelta(days=50), NOW + dt.timedelta(days=52))

    class AriIssuer:
        name = "acme"

        async def renewal_window(self, cert_pem: str) -> tuple[dt.datetime, dt.datetime] | None:
            return window

    class NoAri:
        name = "digicert"

    for issuer, check in ((AriIssuer(), lambda t: window[0] <= t <= window[1]),
                          (NoAri(), lambda t: t == renewal_time(leaf.cert.not_valid_before_utc,
                                                                leaf.cert.not_valid_after_utc, 2 / 3))):
        p = Provisioner(store=None, issuers={issuer.name: issuer}, probe=None,  # type: ignore[arg-type]
                        now=lambda: NOW, rng=random.Random(3))
        from controlplane import provision

        provision._CURRENT_ISSUER.set(issuer)  # type: ignore[arg-type]
        assert check(await p._renew_at(leaf.cert_pem, leaf.cert))
