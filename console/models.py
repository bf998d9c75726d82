from __future__ import annotations

from functools import partial

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from config.ids import new_id


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    DEVELOPER = "developer"
    FINANCE = "finance"


class Organization(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "org"), editable=False)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org")]


class Project(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "proj"), editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="projects")
    name = models.CharField(max_length=200)
    # Origins a publishable key may be used from (exact scheme://host[:port]).
    allowed_origins = models.JSONField(default=list, blank=True)
    idempotency_required = models.BooleanField(default=False)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveBigIntegerField(null=True, blank=True)
    # How long a streamed answer keeps generating after its client dropped, for it to resume.
    stream_resume_seconds = models.PositiveIntegerField(default=30, validators=[MaxValueValidator(600)])
    # Micro-units per calendar month (UTC); null means no cap. Enforced by
    # billing.SpendCounter; change it only through console.services.
    monthly_spend_cap = models.PositiveBigIntegerField(null=True, blank=True)
    # Nodes without attestation (hosted providers, plain servers) see prompts in clear:
    # they serve this project only if it says so. Off by default: the platform's promise.
    allow_non_confidential = models.BooleanField(default=False)
    # Nodes in this region are tried first (e.g. "eu-west"); blank means no preference.
    region_preference = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    class Kind(models.TextChoices):
        SECRET = "secret"
        PUBLISHABLE = "publishable"

    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "key"), editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="api_keys")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True)
    lookup = models.CharField(max_length=16, unique=True)
    hash = models.CharField(max_length=64)
    last4 = models.CharField(max_length=4)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Set when the key is rotated: it keeps working until then (the grace period).
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Optional per-key limits on top of the project's; null means only the project's apply.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveBigIntegerField(null=True, blank=True)
    monthly_spend_cap = models.PositiveBigIntegerField(null=True, blank=True)
    # What the key may call: names from console.keys.SCOPES; [] means everything.
    scopes = models.JSONField(default=list, blank=True)
    rotated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def redacted(self) -> str:
        prefix = "sk_live_" if self.kind == self.Kind.SECRET else "pk_live_"
        return f"{prefix}…{self.last4}"


class AuditEvent(models.Model):
    """Something done on a project's behalf that its owners must be able to review.

    Append-only: written by ``console.services.audit_record``, never changed. An
    agent run writes one per tool call, granted or refused, with the call's
    arguments and a summary of what came of it (not the tool's whole output).
    """

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "audit"), editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="audit_events")
    action = models.CharField(max_length=64)  # e.g. "agent.tool_call"
    outcome = models.CharField(max_length=32)  # e.g. "executed", "refused", "failed"
    actor = models.CharField(max_length=100, blank=True)  # who asked: "key_…", "agent:default"
    subject = models.CharField(max_length=100, blank=True)  # what it belongs to: a job id
    request_id = models.CharField(max_length=40, blank=True)
    data = models.JSONField(default=dict, blank=True)  # e.g. {"tool", "arguments", "summary"}
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"], name="audit_project_created")]

    def __str__(self) -> str:
        return f"{self.action} {self.outcome} ({self.public_id})"


class Invitation(models.Model):
    """An invitation to join an organization with a role, sent by email (console/invitations.py).

    Only the SHA-256 of its token is stored: the link in the email is the only copy. It can be
    accepted once, by a signed-in user whose verified email is ``email``, before ``expires_at``.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "email"], name="invitation_org_email")]

    def __str__(self) -> str:
        return f"{self.email} as {self.role} ({self.organization_id})"
