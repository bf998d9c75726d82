"""The node's side of attestation: ``POST /v1/attestation`` answers a nonce with signed evidence.

A confidential node holds an *attestation key* whose certificate chains to a root
the platform trusts (in a real TEE the hardware holds it; here it is a file made
with ``manage.py attestation_ca issue``), and a *measurement* of its software. At
start it generates the keys clients will use: an Ed25519 key to sign usage
receipts and an X25519 key for sealed requests. Each answer is a report binding
those public keys and the measurement to the gateway's nonce and the time,
signed by the attestation key (format in nodes/attestation/report.py).

For tests the simulator can also misbehave (``--attestation-mode``, or
``attestation_mode`` through /_sim/config):

* ``forged``: signs with a key under a root of its own making, which the platform does not trust;
* ``stale``: ignores the nonce and replays a report it made an hour before it started.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.attestation import ca, report

from .engines import ApiError

NONCE = re.compile(r"[0-9a-f]{32,128}")
STALE_AGE_SECONDS = 3600


def software_measurement() -> str:
    """SHA-384 over this node server's source files: what a TEE would measure at launch, in software."""
    digest = hashlib.sha384()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class NodeIdentity:
    """What the node attests with: its attestation key and chain (None: it can only forge), its measurement,
    and the receipt and sealing keys it made at start."""

    def __init__(self, *, key: report.AttestationKey | None, certificates: list[str], measurement: str):
        if key is not None and not certificates:
            raise ValueError("an attestation key needs its certificate chain")
        self.key, self.certificates, self.measurement = key, certificates, measurement
        self.signing_key = Ed25519PrivateKey.generate()
        self.encryption_key = x25519.X25519PrivateKey.generate()
        self.public_keys = {
            "signing_key": report.raw_public(self.signing_key.public_key()),
            "encryption_key": report.raw_public(self.encryption_key.public_key()),
        }
        self._forger = None
        # Made once, an hour old, for a nonce nobody sent: what a stale node replays.
        self._stale = self._honest(secrets.token_hex(32), issued_at=int(time.time()) - STALE_AGE_SECONDS) if key else None

    @classmethod
    def from_files(cls, key_path: str | None, certificates_path: str | None, measurement: str) -> NodeIdentity:
        key = ca.load_key(key_path) if key_path else None
        certificates = [ca.pem(c) for c in ca.load_certificates(certificates_path)] if certificates_path else []
        return cls(key=key, certificates=certificates, measurement=measurement)

    def _honest(self, nonce: str, issued_at: int | None = None) -> dict[str, Any]:
        data = report.report_bytes(nonce=nonce, measurement=self.measurement, issued_at=issued_at, **self.public_keys)
        return report.evidence(self.key, self.certificates, data)

    def _forged(self, nonce: str) -> dict[str, Any]:
        if self._forger is None:
            root_key, key = ca.new_key(), ca.new_key()
            root = ca.make_root(name="Forged attestation root", key=root_key)
            leaf = ca.issue(name="forged node", public_key=key.public_key(), issuer_key=root_key, issuer=root)
            self._forger = (key, [ca.pem(leaf), ca.pem(root)])
        key, chain = self._forger
        data = report.report_bytes(nonce=nonce, measurement=self.measurement, **self.public_keys)
        return report.evidence(key, chain, data)

    def evidence(self, nonce: str, mode: str = "honest") -> dict[str, Any]:
        if mode == "forged":
            return self._forged(nonce)
        if self.key is None:
            raise ApiError(501, "This node has no attestation key.", type="server_error", code="attestation_unavailable")
        if mode == "stale":
            return self._stale
        return self._honest(nonce)


def add_arguments(parser) -> None:
    """The attestation options of the node commands (run_node_simulator, run_local_node)."""
    group = parser.add_argument_group("attestation (serves POST /v1/attestation when a key or a mode is given)")
    group.add_argument("--attestation-key", help="PEM private key (Ed25519 or ECDSA P-256/P-384), from attestation_ca issue")
    group.add_argument("--attestation-certs", help="PEM certificate chain of that key, its own certificate first")
    group.add_argument(
        "--attestation-measurement", help="hex digest to report (default: SHA-384 of the node server's source)"
    )


def identity_from_options(options: dict[str, Any], *, forge_only: bool = False) -> NodeIdentity | None:
    """The node's identity from the command's options; None when it does not attest.

    ``forge_only``: the node has no key but will still answer (a forged node)."""
    key, certs = options.get("attestation_key"), options.get("attestation_certs")
    if bool(key) != bool(certs):
        raise ValueError("--attestation-key and --attestation-certs go together")
    if not key and not forge_only:
        return None
    measurement = (options.get("attestation_measurement") or software_measurement()).lower()
    if not re.fullmatch(r"[0-9a-f]{32,128}", measurement):
        raise ValueError("--attestation-measurement must be a hex digest of 16 to 64 bytes")
    return NodeIdentity.from_files(key, certs, measurement)


def handler(identity: NodeIdentity):
    """``POST /v1/attestation`` with ``{"nonce": "<hex>"}``: the evidence (nodes/attestation/report.py)."""
    from aiohttp import web

    from .app import ENGINE, _invalid, json_response, read_json

    async def attest(request: web.Request) -> web.Response:
        nonce = (await read_json(request)).get("nonce")
        if not (isinstance(nonce, str) and NONCE.fullmatch(nonce)):
            raise _invalid("nonce", "a lowercase hex string of 32 to 128 characters")
        engine = request.app[ENGINE]
        evidence = identity.evidence(nonce, engine.attestation_mode)
        engine.stats.attestations += 1
        return json_response(evidence)

    return attest
