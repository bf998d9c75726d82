"""``manage.py attestation_ca``: a root for node attestation certificates, and the certificates.

    manage.py attestation_ca init  --dir DIR [--algorithm ed25519|p256|p384] [--days 3650] [--name NAME]
    manage.py attestation_ca issue --dir DIR --node NAME [--algorithm ...] [--days 365]

``init`` writes DIR/root.key and DIR/root.pem (the file ATTESTATION_TRUST_ROOTS names);
``issue`` writes DIR/NAME.key and DIR/NAME.pem, the node's attestation key and its
certificate signed by the root, for ``run_node_simulator``/``run_local_node``
``--attestation-key DIR/NAME.key --attestation-certs DIR/NAME.pem``. For
development, tests and operators' own roots; keys are PEM with mode 0600.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.attestation import ca
from nodes.attestation.x509 import fingerprint

ROOT_KEY, ROOT_CERT = "root.key", "root.pem"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Command(BaseCommand):
    help = "Make a test/dev attestation root (init) and issue node attestation certificates under it (issue)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        init = sub.add_parser("init", help="make a root key and self-signed certificate")
        init.add_argument("--name", default="Attestation root")
        init.add_argument("--days", type=int, default=3650)
        issue = sub.add_parser("issue", help="issue a node attestation key and certificate under the root")
        issue.add_argument("--node", required=True, help="the node's name (file names and certificate subject)")
        issue.add_argument("--days", type=int, default=365)
        for p in (init, issue):
            p.add_argument("--dir", required=True, help="where the root's files are (or go)")
            p.add_argument("--algorithm", choices=ca.ALGORITHMS, default="ed25519")
            p.add_argument("--force", action="store_true", help="overwrite existing files")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"])
        if options["days"] < 1:
            raise CommandError("--days must be at least 1")
        if options["action"] == "init":
            self._init(directory, options)
        else:
            self._issue(directory, options)

    def _free(self, paths: list[Path], force: bool) -> None:
        if not force and (taken := [str(p) for p in paths if p.exists()]):
            raise CommandError(f"{', '.join(taken)} exist(s); pass --force to replace")

    def _init(self, directory: Path, options: dict[str, Any]) -> None:
        key_path, cert_path = directory / ROOT_KEY, directory / ROOT_CERT
        self._free([key_path, cert_path], options["force"])
        directory.mkdir(parents=True, exist_ok=True)
        key = ca.new_key(options["algorithm"])
        root = ca.make_root(name=options["name"], key=key, days=options["days"])
        ca.write_key(key_path, key)
        cert_path.write_text(ca.pem(root))
        self.stdout.write(f"root certificate {cert_path} (sha256 {fingerprint(root)})\n")
        self.stdout.write(f"root key {key_path} (keep it offline in production)\n")
        self.stdout.write(f"trust it with ATTESTATION_TRUST_ROOTS={cert_path.resolve()}\n")

    def _issue(self, directory: Path, options: dict[str, Any]) -> None:
        name = options["node"]
        if not NODE_NAME.fullmatch(name):
            raise CommandError("--node must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            root_key = ca.load_key(directory / ROOT_KEY)
            (root, *_) = ca.load_certificates(directory / ROOT_CERT)
        except (OSError, ValueError) as exc:
            raise CommandError(f"no usable root in {directory} ({exc}); run 'attestation_ca init --dir {directory}' first") from None
        key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
        self._free([key_path, cert_path], options["force"])
        key = ca.new_key(options["algorithm"])
        cert = ca.issue(name=name, public_key=key.public_key(), issuer_key=root_key, issuer=root, days=options["days"])
        ca.write_key(key_path, key)
        cert_path.write_text(ca.pem(cert))
        self.stdout.write(f"node attestation key {key_path}, certificate {cert_path}\n")
        self.stdout.write(f"run the node with --attestation-key {key_path} --attestation-certs {cert_path}\n")
