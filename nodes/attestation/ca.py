"""Making attestation roots and issuing node attestation certificates (``manage.py attestation_ca``).

For development and tests, and for operators who run their own root: a real
TEE's chain comes from its vendor instead (AMD's ARK/ASK/VCEK, Intel's PCK chain).
Keys are written as unencrypted PKCS#8 PEM with mode 0600; keep a production
root's key offline.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from .report import CURVE_HASHES, AttestationKey

ALGORITHMS = ("ed25519", "p256", "p384")
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a verifier whose clock is a little behind


def new_key(algorithm: str = "ed25519") -> AttestationKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")


def _hash_for(key: AttestationKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else CURVE_HASHES[type(key.curve)]()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def issue(
    *,
    name: str,
    public_key,
    issuer_key: AttestationKey,
    issuer: x509.Certificate | None = None,
    days: int = 365,
    ca: bool = False,
    path_length: int | None = None,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer_key``; self-signed (a root) when ``issuer`` is None."""
    now = now or dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer.subject if issuer is not None else _name(name))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, _hash_for(issuer_key))


def make_root(*, name: str, key: AttestationKey, days: int = 3650, now: dt.datetime | None = None) -> x509.Certificate:
    return issue(name=name, public_key=key.public_key(), issuer_key=key, days=days, ca=True, now=now)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_key(path: Path, key: AttestationKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_key(path: str | Path) -> AttestationKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"{path}: an attestation key is Ed25519 or ECDSA P-256/P-384")
    return key


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())
