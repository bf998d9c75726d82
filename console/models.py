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

    class StoreBodies(models.TextChoices):
        NEVER = "never", "Never"
        DAYS = "days", "For a number of days"
        FOREVER = "forever", "Until deleted"

    # Whether the gateway keeps API request/response bodies (encrypted: gateway.vault), and for how
    # long. Never by default. Web Chat conversations are always kept (encrypted), being its history.
    store_bodies = models.CharField(max_length=8, choices=StoreBodies.choices, default=StoreBodies.NEVER)
    body_retention_days = models.PositiveIntegerField(default=30, validators=[MaxValueValidator(3650)])
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    class Kind(models.TextChoices):
        SECRET = "secret"
        PUBLISHABLE = "publishable"
        # The project's Web Chat billing key (console.webchat): created by the system, it has
        # no plaintext at all (its lookup cannot come out of keys.parse and its hash matches
        # nothing), so it never authenticates over HTTP; the relay hands its record to the
        # gateway in-process.
        WEBCHAT = "webchat"

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
        if self.kind == self.Kind.WEBCHAT:
            return "Web Chat (system key, no plaintext)"
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


class Conversation(models.Model):
    """A Web Chat conversation: one user's, in one project (which pays for it)."""

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "conv"), editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="conversations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    # Written and read only through console.chat_store (the privacy issue swaps in encryption there).
    title = models.TextField(blank=True)
    model = models.CharField(max_length=200)
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["user", "deleted", "-updated_at"], name="conv_user_recent")]

    def __str__(self) -> str:
        return self.public_id


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        OK = "ok"
        STOPPED = "stopped"
        FAILED = "failed"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    # Written and read only through console.chat_store.
    content = models.TextField(blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.BigIntegerField(default=0)  # micro-units, as settled by the gateway
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    # The turn an assistant reply answers: unique, so storing the reply twice is a no-op.
    turn_id = models.CharField(max_length=40, null=True, blank=True, unique=True)
    # A regenerated answer replaces the last one: the old reply is kept, hidden.
    superseded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["conversation", "created_at"], name="message_conv_time")]


class RelayCredential(models.Model):
    """A short-lived credential for one Web Chat turn's stream (console.relay).

    Only its SHA-256 is stored. Bound to the user, conversation, model and a spend
    cap; ``minted`` until its first use claims it (``streaming``, a conditional
    UPDATE: a replayed first use is refused), ``revoked`` when the turn ends.
    """

    class State(models.TextChoices):
        MINTED = "minted"
        STREAMING = "streaming"
        REVOKED = "revoked"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "rly"), editable=False)
    token_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="credentials")
    turn_id = models.CharField(max_length=40, unique=True)
    model = models.CharField(max_length=200)
    spend_cap = models.BigIntegerField()  # micro-units this turn may reserve
    state = models.CharField(max_length=16, choices=State.choices, default=State.MINTED)
    request_id = models.CharField(max_length=128, blank=True)  # the gateway stream's, once it started
    stop_requested = models.BooleanField(default=False)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(spend_cap__gte=0), name="relay_spend_cap_nonnegative"),
        ]
