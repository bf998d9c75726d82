"""Writes to tenants and keys. Views, commands and the management API call these."""
from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from billing import services as billing_services
from config import bus

from . import keys
from .models import ApiKey, AuditEvent, Membership, Organization, Project, Role

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
    monthly_spend_cap: int | None = None,
    stream_resume_seconds: int | None = None,
    allow_non_confidential: bool | None = None,
    region_preference: str | None = None,
) -> Project:
    """Change the given settings; None leaves one as it is (clear a spend cap
    with ``project_spend_cap_set(monthly_spend_cap=None)``)."""
    if stream_resume_seconds is not None and not 0 <= stream_resume_seconds <= 600:
        raise ValueError("stream_resume_seconds must be between 0 and 600")
    changes = {
        "name": name,
        "allowed_origins": allowed_origins,
        "idempotency_required": idempotency_required,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "stream_resume_seconds": stream_resume_seconds,
        "allow_non_confidential": allow_non_confidential,
        "region_preference": region_preference.strip() if region_preference is not None else None,
    }
    fields = [field for field, value in changes.items() if value is not None]
    for field in fields:
        setattr(project, field, changes[field])
    with transaction.atomic():
        project.save(update_fields=fields)
        if monthly_spend_cap is not None:
            project_spend_cap_set(project=project, monthly_spend_cap=monthly_spend_cap)
        transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    return project


def project_body_storage_set(*, project: Project, store_bodies: str, body_retention_days: int) -> Project:
    """Whether the gateway keeps API bodies (encrypted: gateway.vault) — never, N days, or until
    deleted. Applies to new requests within a second; bodies already kept keep their expiry."""
    if store_bodies not in Project.StoreBodies.values:
        raise ValueError(f"store_bodies must be one of {', '.join(Project.StoreBodies.values)}")
    if not 1 <= body_retention_days <= 3650:
        raise ValueError("body_retention_days must be between 1 and 3650")
    project.store_bodies, project.body_retention_days = store_bodies, body_retention_days
    with transaction.atomic():
        project.save(update_fields=["store_bodies", "body_retention_days"])
        transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    return project


def _check_limit(name: str, value: int | None, *, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, or None")


@transaction.atomic
def project_spend_cap_set(*, project: Project, monthly_spend_cap: int | None) -> Project:
    """Cap the project's spend per calendar month (UTC) in micro-units; None removes the cap.
    The month's spend so far counts against a new cap at once."""
    _check_limit("monthly_spend_cap", monthly_spend_cap, minimum=0)
    project.monthly_spend_cap = monthly_spend_cap
    project.save(update_fields=["monthly_spend_cap"])
    billing_services.spend_cap_set(project=project, cap=monthly_spend_cap)
    transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    return project


@transaction.atomic
def api_key_limits_set(*, key: ApiKey, rpm_limit: int | None, tpm_limit: int | None) -> ApiKey:
    """Set the key's own requests/tokens per minute, enforced on top of the
    project's; None removes that limit (the project's still applies)."""
    _check_limit("rpm_limit", rpm_limit, minimum=1)
    _check_limit("tpm_limit", tpm_limit, minimum=1)
    key.rpm_limit, key.tpm_limit = rpm_limit, tpm_limit
    key.save(update_fields=["rpm_limit", "tpm_limit"])
    transaction.on_commit(lambda: bus.publish(KEY_TOPIC, key.lookup))
    return key


@transaction.atomic
def api_key_spend_cap_set(*, key: ApiKey, monthly_spend_cap: int | None) -> ApiKey:
    """Cap the key's spend per calendar month (UTC) in micro-units; None removes the cap.
    The key's spend so far this month counts against a new cap at once."""
    _check_limit("monthly_spend_cap", monthly_spend_cap, minimum=0)
    key.monthly_spend_cap = monthly_spend_cap
    key.save(update_fields=["monthly_spend_cap"])
    billing_services.spend_cap_set(project=key.project, key=key, cap=monthly_spend_cap)
    transaction.on_commit(lambda: bus.publish(KEY_TOPIC, key.lookup))
    return key


@transaction.atomic
def api_key_create(
    *,
    project: Project,
    kind: str,
    name: str = "",
    created_by=None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    monthly_spend_cap: int | None = None,
    scopes: list[str] | None = None,
    expires_at: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key, optionally with its own limits and cap, scopes (console.keys.SCOPES;
    none: everything) and an expiry; the plaintext is returned once and never stored."""
    scopes = sorted(set(scopes or ()))
    unknown = [s for s in scopes if s not in keys.SCOPES]
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("expires_at must be in the future")
    _check_limit("rpm_limit", rpm_limit, minimum=1)
    _check_limit("tpm_limit", tpm_limit, minimum=1)
    _check_limit("monthly_spend_cap", monthly_spend_cap, minimum=0)
    new = keys.generate(kind)
    key = ApiKey.objects.create(
        project=project, kind=kind, name=name, lookup=new.lookup, hash=new.hash, last4=new.last4, created_by=created_by,
        rpm_limit=rpm_limit, tpm_limit=tpm_limit, monthly_spend_cap=monthly_spend_cap,
        scopes=scopes, expires_at=expires_at,
    )
    if monthly_spend_cap is not None:
        billing_services.spend_cap_set(project=project, key=key, cap=monthly_spend_cap)
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
    if ApiKey.objects.filter(rotated_from=key).exists():
        raise ValueError("this key was already rotated; rotate its replacement")
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        raise ValueError("this key has expired")
    # The replacement keeps the key's limits, cap, scopes and expiry (its spend counts afresh:
    # it is a new key), so rotating never widens what a key may do or for how long.
    new_key, plaintext = api_key_create(
        project=key.project, kind=key.kind, name=key.name, created_by=created_by,
        rpm_limit=key.rpm_limit, tpm_limit=key.tpm_limit, monthly_spend_cap=key.monthly_spend_cap,
        scopes=key.scopes, expires_at=key.expires_at,
    )
    new_key.rotated_from = key
    new_key.save(update_fields=["rotated_from"])
    expires_at = now + grace
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


AUDIT_MAX_TEXT = 2000  # a string in an audit event's data is cut to this many characters


def _bounded(value, depth: int = 0):
    """``value`` with long strings cut and deep nesting flattened, so one event stays small."""
    if isinstance(value, str):
        return value if len(value) <= AUDIT_MAX_TEXT else value[:AUDIT_MAX_TEXT] + "…"
    if depth >= 4:
        return _bounded(repr(value), depth)
    if isinstance(value, dict):
        return {str(k)[:100]: _bounded(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [_bounded(v, depth + 1) for v in value[:50]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _bounded(repr(value), depth)


def audit_record(
    *,
    project_id: int,
    action: str,
    outcome: str,
    actor: str = "",
    subject: str = "",
    request_id: str = "",
    data: dict | None = None,
) -> AuditEvent:
    """Append an event to the project's audit trail (strings in ``data`` are bounded)."""
    return AuditEvent.objects.create(
        project_id=project_id, action=action, outcome=outcome, actor=actor[:100], subject=subject[:100],
        request_id=request_id[:40], data=_bounded(data or {}),
    )


@transaction.atomic
def project_settings_save(
    *,
    project: Project,
    name: str,
    allowed_origins: list[str],
    idempotency_required: bool,
    stream_resume_seconds: int,
    rpm_limit: int | None,
    tpm_limit: int | None,
    monthly_spend_cap: int | None,
) -> Project:
    """Save the console's project settings form: every value as given (None clears a limit or
    the cap). Validated against the plan by the caller (console.forms); the gateway sees the
    change within a second (the invalidations ``project_update`` publishes)."""
    _check_limit("rpm_limit", rpm_limit, minimum=1)
    _check_limit("tpm_limit", tpm_limit, minimum=1)
    project_update(
        project=project, name=name, allowed_origins=allowed_origins, idempotency_required=idempotency_required,
        stream_resume_seconds=stream_resume_seconds,
    )
    project.rpm_limit, project.tpm_limit = rpm_limit, tpm_limit
    project.save(update_fields=["rpm_limit", "tpm_limit"])
    if monthly_spend_cap != project.monthly_spend_cap:
        project_spend_cap_set(project=project, monthly_spend_cap=monthly_spend_cap)
    return project
