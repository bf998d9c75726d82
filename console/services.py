"""Writes to tenants and keys. Views, commands and the management API call these."""
from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from billing import services as billing_services
from config import bus

from . import keys
from .models import ApiKey, Membership, Organization, Project, Role

KEY_TOPIC = "key"  # value: the key's lookup prefix
PROJECT_TOPIC = "project"  # value: the project's id
MAX_GRACE = dt.timedelta(days=30)


@transaction.atomic
def organization_create(*, name: str, owner, project_name: str = "Default project") -> Organization:
    organization = Organization.objects.create(name=name)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    Project.objects.create(organization=organization, name=project_name)
    billing_services.account_open(organization=organization)
    return organization


def membership_add(*, organization: Organization, user, role: str) -> Membership:
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}")
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


def project_create(*, organization: Organization, name: str) -> Project:
    return Project.objects.create(organization=organization, name=name)


def project_update(
    *,
    project: Project,
    name: str | None = None,
    allowed_origins: list[str] | None = None,
    idempotency_required: bool | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    stream_resume_seconds: int | None = None,
) -> Project:
    if stream_resume_seconds is not None and not 0 <= stream_resume_seconds <= 600:
        raise ValueError("stream_resume_seconds must be between 0 and 600")
    changes = {
        "name": name,
        "allowed_origins": allowed_origins,
        "idempotency_required": idempotency_required,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "stream_resume_seconds": stream_resume_seconds,
    }
    fields = [field for field, value in changes.items() if value is not None]
    for field in fields:
        setattr(project, field, changes[field])
    with transaction.atomic():
        project.save(update_fields=fields)
        transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    return project


def api_key_create(*, project: Project, kind: str, name: str = "", created_by=None) -> tuple[ApiKey, str]:
    """Create a key; the plaintext is returned once and never stored."""
    new = keys.generate(kind)
    key = ApiKey.objects.create(
        project=project, kind=kind, name=name, lookup=new.lookup, hash=new.hash, last4=new.last4, created_by=created_by
    )
    # A cache may hold a negative entry for this prefix from a guessed key.
    transaction.on_commit(lambda: bus.publish(KEY_TOPIC, new.lookup))
    return key, new.plaintext


@transaction.atomic
def api_key_rotate(*, key: ApiKey, grace: dt.timedelta, created_by=None) -> tuple[ApiKey, str]:
    """Issue a replacement; the old key keeps working for ``grace``, then expires."""
    if key.status != ApiKey.Status.ACTIVE:
        raise ValueError("only an active key can be rotated")
    if not dt.timedelta(0) <= grace <= MAX_GRACE:
        raise ValueError(f"grace must be between 0 and {MAX_GRACE.days} days")
    new_key, plaintext = api_key_create(project=key.project, kind=key.kind, name=key.name, created_by=created_by)
    new_key.rotated_from = key
    new_key.save(update_fields=["rotated_from"])
    expires_at = timezone.now() + grace
    if key.expires_at is None or expires_at < key.expires_at:
        key.expires_at = expires_at
        key.save(update_fields=["expires_at"])
    transaction.on_commit(lambda: bus.publish(KEY_TOPIC, key.lookup))
    return new_key, plaintext


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    updated = ApiKey.objects.filter(id=key.id, status=ApiKey.Status.ACTIVE).update(
        status=ApiKey.Status.REVOKED, revoked_at=timezone.now()
    )
    if updated:
        key.refresh_from_db(fields=["status", "revoked_at"])
    transaction.on_commit(lambda: bus.publish(KEY_TOPIC, key.lookup))
    return key
