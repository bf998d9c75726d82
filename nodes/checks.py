"""System checks (``manage.py check``, and before migrate/runserver): the attestation trust roots load."""
from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security)
def attestation_trust_roots(app_configs, **kwargs) -> list[checks.CheckMessage]:
    from nodes.attestation.verifiers import AttestationFailure
    from nodes.attestation.x509 import trust_roots

    if not settings.ATTESTATION_TRUST_ROOTS:
        if settings.PRODUCTION:
            return [checks.Warning(
                "ATTESTATION_TRUST_ROOTS is empty: no node can pass attestation, so confidential nodes serve nobody.",
                id="nodes.W001",
            )]
        return []
    try:
        roots = trust_roots()
    except AttestationFailure as exc:
        return [checks.Error(f"ATTESTATION_TRUST_ROOTS: {exc.message}", id="nodes.E001")]
    if not roots:
        return [checks.Error("ATTESTATION_TRUST_ROOTS holds no CA certificate", id="nodes.E002")]
    return []
