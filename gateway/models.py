from __future__ import annotations

from django.db import models


class RequestRecord(models.Model):
    """Metadata of one API request. Bodies are never stored here."""

    request_id = models.CharField(max_length=128)
    organization = models.ForeignKey("console.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("console.Project", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey("console.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=200, blank=True)
    node_id = models.CharField(max_length=40, blank=True)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.BigIntegerField(default=0)  # micro-units actually posted
    price_version = models.PositiveIntegerField(null=True)
    transfer_id = models.BigIntegerField(null=True)
    session_id = models.CharField(max_length=128, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True)
    attempts = models.PositiveSmallIntegerField(default=0)  # nodes tried before one answered (failover)
    # The project kept this request's bodies: they are BodyBlob rows (owner "request", ref
    # request_id), encrypted; gone once expired or shredded. False: never stored.
    bodies_kept = models.BooleanField(default=False)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["project", "-created_at"], name="request_project_time"),
            models.Index(fields=["project", "request_id"], name="request_project_id"),
            models.Index(fields=["api_key", "-created_at"], name="request_key_time"),
        ]


class IdempotencyRecord(models.Model):
    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    project = models.ForeignKey("console.Project", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    body_hash = models.CharField(max_length=64)
    request_id = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=Status.choices)
    response_status = models.PositiveSmallIntegerField(null=True)
    # The stored response (status line aside), AES-GCM sealed: see gateway.idempotency.
    response = models.BinaryField(null=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "key"], name="idempotency_unique_key")]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]


class StoredResponse(models.Model):
    """A Responses API answer kept for GET /v1/responses/{id}, AES-GCM sealed at rest."""

    public_id = models.CharField(max_length=40, unique=True)
    project = models.ForeignKey("console.Project", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=128)
    created_at = models.DateTimeField()
    body = models.BinaryField()


class ProjectKey(models.Model):
    """A project's key-encryption key (KEK), one row per version, stored only wrapped by a
    master key version (config.envelope). Destroying it (crypto-shred) erases the wrapped
    key: every blob under it is unreadable for good. Written by gateway.vault only."""

    project = models.ForeignKey("console.Project", on_delete=models.PROTECT, related_name="+")
    version = models.PositiveIntegerField()
    wrapped_key = models.BinaryField(null=True)  # None once destroyed
    master_version = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="projectkey_unique_version")]


class BodyBlob(models.Model):
    """One encrypted body (a request's or response's, or a Web Chat text): AES-256-GCM under a
    fresh data key, itself wrapped by the project's KEK ``kek_version``. The associated data
    binds organization, project, owner row and kind (config.envelope.blob_aad)."""

    class Owner(models.TextChoices):
        REQUEST = "request"  # ref: the RequestRecord's request_id
        MESSAGE = "message"  # ref: a Web Chat message id

    class Kind(models.TextChoices):
        REQUEST = "request"
        RESPONSE = "response"

    organization_id = models.BigIntegerField()
    project = models.ForeignKey("console.Project", on_delete=models.PROTECT, related_name="+")
    owner = models.CharField(max_length=16, choices=Owner.choices)
    ref = models.CharField(max_length=128)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    kek_version = models.PositiveIntegerField()
    wrapped_key = models.BinaryField()
    nonce = models.BinaryField()
    ciphertext = models.BinaryField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)  # None: kept until shredded

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "owner", "ref", "kind"], name="bodyblob_unique_owner_kind"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="bodyblob_expiry"),
            models.Index(fields=["project", "kek_version"], name="bodyblob_project_kek"),
        ]


class UsageReceipt(models.Model):
    """A sealed request's usage receipt, as signed (gateway/SEALED.md): the exact receipt bytes and
    signature, so a customer can check every charge against the node's attested key."""

    request_id = models.CharField(max_length=128, unique=True)
    project = models.ForeignKey("console.Project", on_delete=models.CASCADE, related_name="+")
    node_id = models.CharField(max_length=40)  # the node's public id, or "gateway" (standard tier)
    tier = models.CharField(max_length=16)
    signing_key = models.CharField(max_length=64, blank=True)  # the key it was checked with (b64 raw Ed25519)
    receipt = models.BinaryField()
    signature = models.BinaryField()
    verified = models.BooleanField()
    reason = models.CharField(max_length=64, blank=True)  # why it was refused (bad_signature, mismatch:model, …)
    input_tokens = models.BigIntegerField(default=0)  # as the receipt says
    output_tokens = models.BigIntegerField(default=0)
    cost = models.BigIntegerField(default=0)  # micro-units settled (0 when voided)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["project", "-created_at"], name="receipt_project_time")]
