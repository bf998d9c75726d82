"""What makes evidence acceptable: the x509-report-v1 verifier and the checks every format shares.

Real keys and certificates (nodes.attestation.ca), a root of the test's own
trusted through ATTESTATION_TRUST_ROOTS, and evidence made the way a node makes it
(nodes.attestation.report). Time stands still: certificates, reports and checks all
use NOW, whenever the test runs.
"""
from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from nodes.attestation import ca, report
from nodes.attestation.verifiers import AttestationFailure, verify
from nodes.attestation.x509 import fingerprint

MEASUREMENT = "ab" * 48
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SKEW = dt.timedelta(seconds=30)


@dataclass
class Authority:
    key: ca.AttestationKey
    cert: object

    def issue(self, name: str = "node", algorithm: str = "ed25519", **kwargs) -> tuple[ca.AttestationKey, object]:
        key = ca.new_key(algorithm)
        kwargs.setdefault("now", NOW)
        return key, ca.issue(name=name, public_key=key.public_key(), issuer_key=self.key, issuer=self.cert, **kwargs)


def make_root(algorithm: str = "ed25519", name: str = "Attestation root") -> Authority:
    key = ca.new_key(algorithm)
    return Authority(key, ca.make_root(name=name, key=key, now=NOW))


@pytest.fixture
def root(settings, tmp_path: Path) -> Authority:
    authority = make_root()
    path = tmp_path / "root.pem"
    path.write_text(ca.pem(authority.cert))
    settings.ATTESTATION_TRUST_ROOTS = [str(path)]
    return authority


def node_keys() -> dict[str, str]:
    return {
        "signing_key": report.raw_public(ed25519.Ed25519PrivateKey.generate().public_key()),
        "encryption_key": report.raw_public(x25519.X25519PrivateKey.generate().public_key()),
    }


def evidence(key, chain, nonce: str, *, measurement: str = MEASUREMENT, issued_at: dt.datetime = NOW, **keys) -> dict:
    data = report.report_bytes(
        nonce=nonce, measurement=measurement, issued_at=int(issued_at.timestamp()), **{**node_keys(), **keys}
    )
    return report.evidence(key, [ca.pem(c) for c in chain], data)


def check(ev, nonce: str, *, challenged_at: dt.datetime = NOW, now: dt.datetime = NOW, allowed=(MEASUREMENT,)):
    return verify(ev, nonce=nonce, challenged_at=challenged_at, now=now, skew=SKEW, allowed=lambda m: m in allowed)


def refused(ev, nonce: str, **kwargs) -> str:
    with pytest.raises(AttestationFailure) as failure:
        check(ev, nonce, **kwargs)
    return failure.value.reason


@pytest.mark.parametrize("algorithm", ca.ALGORITHMS)
def test_evidence_chaining_to_a_trusted_root_verifies_and_binds_the_nodes_keys(settings, tmp_path, algorithm):
    authority = make_root(algorithm)
    (tmp_path / "roots.pem").write_text(ca.pem(make_root().cert) + ca.pem(authority.cert))  # a file may hold several
    settings.ATTESTATION_TRUST_ROOTS = [str(tmp_path / "roots.pem")]
    key, cert = authority.issue(algorithm=algorithm)
    nonce, keys = secrets.token_hex(32), node_keys()
    claims = check(evidence(key, [cert], nonce, **keys), nonce)
    assert (claims.nonce, claims.measurement, claims.issued_at) == (nonce, MEASUREMENT, NOW)
    assert (claims.signing_key, claims.encryption_key) == (keys["signing_key"], keys["encryption_key"])
    assert claims.root_fingerprint == fingerprint(authority.cert)


def test_a_chain_through_an_intermediate_verifies_only_when_every_link_may_sign(root):
    intermediate_key = ca.new_key("p256")
    intermediate = Authority(intermediate_key, ca.issue(
        name="Intermediate", public_key=intermediate_key.public_key(), issuer_key=root.key, issuer=root.cert,
        ca=True, path_length=0, now=NOW,
    ))
    key, cert = intermediate.issue()
    nonce = secrets.token_hex(32)
    assert check(evidence(key, [cert, intermediate.cert], nonce), nonce).nonce == nonce
    assert check(evidence(key, [cert, intermediate.cert, root.cert], nonce), nonce).nonce == nonce  # the root may come along
    assert refused(evidence(key, [cert], nonce), nonce) == "untrusted_chain"  # the intermediate is missing

    # An intermediate that is no CA cannot vouch for anyone.
    plain_key = ca.new_key()
    plain = Authority(plain_key, ca.issue(name="Not a CA", public_key=plain_key.public_key(), issuer_key=root.key,
                                          issuer=root.cert, now=NOW))
    key, cert = plain.issue()
    assert refused(evidence(key, [cert, plain.cert], nonce), nonce) == "untrusted_chain"

    # path_length 0: the intermediate may not sign another CA.
    sub_key = ca.new_key()
    sub = Authority(sub_key, ca.issue(name="Sub", public_key=sub_key.public_key(), issuer_key=intermediate_key,
                                      issuer=intermediate.cert, ca=True, now=NOW))
    key, cert = sub.issue()
    assert refused(evidence(key, [cert, sub.cert, intermediate.cert], nonce), nonce) == "untrusted_chain"


def test_a_root_the_platform_does_not_trust_is_refused_even_under_the_same_name(root):
    impostor = make_root(name="Attestation root")  # the trusted root's subject, another key
    key, cert = impostor.issue()
    nonce = secrets.token_hex(32)
    assert refused(evidence(key, [cert], nonce), nonce) == "untrusted_chain"
    assert refused(evidence(key, [cert, impostor.cert], nonce), nonce) == "untrusted_chain"


def test_expired_not_yet_valid_and_ca_certificates_cannot_attest(root):
    nonce = secrets.token_hex(32)
    key, expired = root.issue(days=1, now=NOW - dt.timedelta(days=3))
    assert refused(evidence(key, [expired], nonce), nonce) == "invalid_certificate"
    key, future = root.issue(now=NOW + dt.timedelta(days=2))
    assert refused(evidence(key, [future], nonce), nonce) == "invalid_certificate"
    key, authority = root.issue(ca=True)
    assert refused(evidence(key, [authority], nonce), nonce) == "invalid_certificate"


def test_a_tampered_report_or_signature_is_refused(root):
    key, cert = root.issue()
    nonce = secrets.token_hex(32)
    good = evidence(key, [cert], nonce)
    assert check(good, nonce)

    # A man in the middle swaps in his own sealing key: the signed bytes change, the signature does not.
    claims = orjson.loads(base64.b64decode(good["report"]))
    claims["encryption_key"] = node_keys()["encryption_key"]
    swapped = {**good, "report": report.b64(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))}
    assert refused(swapped, nonce) == "bad_signature"

    signature = bytearray(base64.b64decode(good["signature"]))
    signature[-1] ^= 1
    assert refused({**good, "signature": report.b64(bytes(signature))}, nonce) == "bad_signature"

    # Someone else's key under a copy of the node's (public) certificate.
    assert refused(evidence(ca.new_key(), [cert], nonce), nonce) == "bad_signature"


def test_the_nonce_must_be_ours_and_the_report_fresh(root):
    key, cert = root.issue()
    nonce = secrets.token_hex(32)
    assert refused(evidence(key, [cert], secrets.token_hex(32)), nonce) == "nonce_mismatch"
    old = NOW - dt.timedelta(hours=1)
    assert refused(evidence(key, [cert], nonce, issued_at=old), nonce) == "stale_report"
    assert refused(evidence(key, [cert], nonce, issued_at=NOW + dt.timedelta(minutes=5)), nonce) == "future_report"
    # Clocks differ a little: within the skew either way is fine.
    assert check(evidence(key, [cert], nonce, issued_at=NOW - SKEW + dt.timedelta(seconds=1)), nonce)
    assert check(evidence(key, [cert], nonce, issued_at=NOW + SKEW - dt.timedelta(seconds=1)), nonce)


def test_only_allow_listed_measurements_pass(root):
    key, cert = root.issue()
    nonce = secrets.token_hex(32)
    assert refused(evidence(key, [cert], nonce, measurement="cd" * 48), nonce) == "unknown_measurement"
    assert refused(evidence(key, [cert], nonce), nonce, allowed=()) == "unknown_measurement"


def test_malformed_evidence_and_unknown_formats_are_refused_with_a_reason(root):
    key, cert = root.issue()
    nonce = secrets.token_hex(32)
    good = evidence(key, [cert], nonce)
    cases = {
        "malformed_evidence": [
            "a string", {}, {**good, "report": "not base64!"}, {**good, "certificates": []},
            {**good, "certificates": [ca.pem(cert)] * 5}, {**good, "certificates": ["-----BEGIN CERTIFICATE-----"]},
        ],
        "unsupported_format": [{**good, "format": "sev-snp-v9"}],
    }
    for reason, bad in cases.items():
        for ev in bad:
            assert refused(ev, nonce) == reason, ev
    not_json = report.evidence(key, [ca.pem(cert)], b"{not json")
    assert refused(not_json, nonce) == "malformed_evidence"
    short_key = evidence(key, [cert], nonce, signing_key=report.b64(b"short"))
    assert refused(short_key, nonce) == "malformed_evidence"


def test_no_usable_trust_root_verifies_nobody(root, settings, tmp_path):
    key, cert = root.issue()
    nonce = secrets.token_hex(32)
    settings.ATTESTATION_TRUST_ROOTS = [str(tmp_path / "missing.pem")]
    assert refused(evidence(key, [cert], nonce), nonce) == "no_trust_roots"
    settings.ATTESTATION_TRUST_ROOTS = []
    assert refused(evidence(key, [cert], nonce), nonce) == "untrusted_chain"
