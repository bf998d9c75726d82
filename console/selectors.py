"""Tenant-scoped reads. Everything that takes a caller scopes by it: an id of
another tenant's object raises DoesNotExist, which views answer with 404."""
from __future__ import annotations

from django.db.models import QuerySet

from .models import ApiKey, AuditEvent, Membership, Organization, Project


def organizations_for_user(user) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("created_at")


def membership_for(user, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def project_for_user(user, public_id: str) -> Project:
    return Project.objects.select_related("organization").get(public_id=public_id, organization__memberships__user=user)


# The kinds people manage; the Web Chat key is the system's (no plaintext, never listed or changed by clients).
MANAGED_KINDS = (ApiKey.Kind.SECRET, ApiKey.Kind.PUBLISHABLE)


def keys_for_project(project: Project) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(project=project, kind__in=MANAGED_KINDS).order_by("-created_at")


def key_in_project(project_id: int, public_id: str) -> ApiKey:
    return ApiKey.objects.select_related("project").get(
        project_id=project_id, public_id=public_id, kind__in=MANAGED_KINDS
    )


def audit_events_for_project(project_id: int, *, action: str | None = None) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(project_id=project_id)
    if action is not None:
        events = events.filter(action=action)
    return events.order_by("created_at", "id")
