"""`set/commit/abort ssl ca-file`: builders refuse bad names before sending; replies captured from 2.6.12 and
2.8 are classified (success only for exactly our file)."""

from __future__ import annotations

import pytest

from agent.runtime import (
    BadArgument,
    CommandFailed,
    InvalidCertificate,
    NotFound,
    NoTransaction,
    PayloadTooLarge,
)
from agent.runtime import commands as cmds
from agent.runtime.responses import check_reply

CA = "/srv/lockstep/pki/internal-ca.pem"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_builders() -> None:
    assert cmds.set_ssl_ca_file(CA, PEM).text == f"set ssl ca-file {CA} <<\n{PEM.strip()}\n\n"
    assert cmds.commit_ssl_ca_file(CA).text == f"commit ssl ca-file {CA}\n"
    assert cmds.abort_ssl_ca_file(CA).text == f"abort ssl ca-file {CA}\n"
    for bad in ("relative.pem", "/a b.pem", "/x\n.pem", ""):
        with pytest.raises(BadArgument):
            cmds.set_ssl_ca_file(bad, PEM)
    with pytest.raises(BadArgument):
        cmds.set_ssl_ca_file(CA, "\n\n")  # blank lines are dropped; nothing left
    with pytest.raises(PayloadTooLarge):
        cmds.set_ssl_ca_file(CA, PEM * 400)


@pytest.mark.parametrize("reply", [f"transaction created for CA {CA}!\n\n", f"transaction updated for CA {CA}!\n\n"])
def test_set_success_only_for_our_file(reply: str) -> None:
    assert check_reply(cmds.set_ssl_ca_file(CA, PEM), reply)
    with pytest.raises(CommandFailed):
        check_reply(cmds.set_ssl_ca_file("/other/ca.pem", PEM), reply)


def test_replies_captured_from_haproxy() -> None:
    assert check_reply(cmds.commit_ssl_ca_file(CA), f"Committing {CA}.\nSuccess!\n\n")
    assert check_reply(cmds.abort_ssl_ca_file(CA), f"Transaction aborted for certificate '{CA}'!\n\n")
    with pytest.raises(InvalidCertificate):
        check_reply(cmds.set_ssl_ca_file(CA, PEM), f"Invalid payload\nCan't update {CA}!\n\n")
    with pytest.raises(NotFound):
        check_reply(cmds.set_ssl_ca_file(CA, PEM), "Can't replace a CA file which is not referenced by the "
                                                   f"configuration!\nCan't update {CA}!\n\n")
    with pytest.raises(NoTransaction):
        check_reply(cmds.commit_ssl_ca_file(CA), f"No ongoing transaction! !\nCan't commit {CA}!\n\n")
    with pytest.raises(NoTransaction):
        check_reply(cmds.abort_ssl_ca_file(CA), "No ongoing transaction!\n\n")
