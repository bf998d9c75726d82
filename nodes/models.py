from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models

from config.ids import new_id


# Adapter kinds that reach a hosted model API (nodes/adapters/providers.py, anthropic.py): the
# provider sees prompts in clear and cannot be attested, so such a node's attestation is always
# "none" (a database constraint) and only projects that allow non-confidential nodes reach it.
PROVIDER_ADAPTERS = ("provider-openai", "provider-compatible", "provider-anthropic")


class Node(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        DRAINING = "draining"  # finishes what it has, takes nothing new
        DISABLED = "disabled"

    class Attestation(models.TextChoices):
        NONE = "none"  # not confidential (a hosted provider, a plain server)
        UNVERIFIED = "unverified"
        VERIFIED = "verified"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "node"))
    name = models.CharField(max_length=200)
    operator = models.ForeignKey("console.Organization", null=True, blank=True, on_delete=models.PROTECT)
    base_url = models.URLField(max_length=500, help_text="OpenAI-compatible base, e.g. http://10.0.0.5:8000/v1")
    # Only for clusters (adapter "thox"): their management API. Blank = base_url's host on port 5381.
    cluster_url = models.URLField(
        max_length=500, blank=True, help_text="Thox cluster API root, e.g. http://10.0.0.5:5381; blank = base URL host, port 5381"
    )
    adapter = models.CharField(max_length=32, default="openai")
    region = models.CharField(max_length=64, default="local")
    hardware = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    attestation = models.CharField(max_length=16, choices=Attestation.choices, default=Attestation.NONE)
    # A verified attestation is trusted until then; after it the node is stale and routed around.
    attestation_expires_at = models.DateTimeField(null=True, blank=True)
    # The public keys the current verified attestation bound (base64 of the raw 32 bytes): Ed25519
    # for usage receipts, X25519 for sealed requests. Empty unless verified; set only by
    # nodes.attestation.services.
    signing_key = models.CharField(max_length=64, blank=True, editable=False)
    encryption_key = models.CharField(max_length=64, blank=True, editable=False)
    gpus = models.PositiveIntegerField(default=0, help_text="GPU count (e.g. 8 for '8x H100')")
    healthy = models.BooleanField(default=True)
    last_health_at = models.DateTimeField(null=True, blank=True)
    # Sealed with config.crypto (purpose "node-credentials", bound to public_id); set and read
    # only through services.node_credentials_set / node_credentials.
    credentials = models.BinaryField(null=True, blank=True, editable=False)
    # Reported by the node's heartbeat (POST /v1/nodes/{id}/heartbeat).
    load = models.FloatField(default=0.0)
    queue_depth = models.PositiveIntegerField(default=0)
    models_loaded = models.JSONField(default=list, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Probes failed in a row: NODE_UNHEALTHY_AFTER of them mark the node unhealthy.
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(load__gte=0, load__lte=1), name="node_load_range"),
            # Whatever writes a node (services, admin, the attestation task), a provider is never attested.
            models.CheckConstraint(
                condition=~models.Q(adapter__in=PROVIDER_ADAPTERS)
                | models.Q(attestation="none", attestation_expires_at__isnull=True),
                name="node_provider_not_attested",
            ),
            # An operator registers by name, so the name is its key (admin-added nodes have no operator).
            models.UniqueConstraint(
                fields=["operator", "name"], condition=models.Q(operator__isnull=False), name="node_operator_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class NodeToken(models.Model):
    """An operator's credential for registering nodes and pushing heartbeats (``nt_live_…``).

    Same scheme as API keys (console.keys): the lookup prefix in clear, a keyed hash of
    the whole token, the plaintext shown once.
    """

    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "ntok"), editable=False)
    organization = models.ForeignKey("console.Organization", on_delete=models.PROTECT, related_name="node_tokens")
    name = models.CharField(max_length=200, blank=True)
    lookup = models.CharField(max_length=16, unique=True, editable=False)
    hash = models.CharField(max_length=64, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @property
    def redacted(self) -> str:
        return f"nt_live_…{self.last4}"

    def __str__(self) -> str:
        return f"{self.name or self.public_id} ({self.redacted})"


class Modality(models.TextChoices):
    """Kinds of input a served model accepts (chat content parts: text, image_url, input_audio)."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"


def default_input_modalities() -> list[str]:
    return [Modality.TEXT.value]


class NodeModel(models.Model):
    """A model a node serves: the public name clients use and the node's own name."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="models")
    model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200)
    context_window = models.PositiveIntegerField(default=4096)
    max_output_tokens = models.PositiveIntegerField(default=1024)
    # A list of Modality values; services.node_upsert checks them (JSON has no enum constraint).
    input_modalities = models.JSONField(default=default_input_modalities)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "model"], name="nodemodel_unique")]


class NodeMember(models.Model):
    """A device inside a cluster node (a Thox MagStack): kept by nodes.clusters, shown only to operators.

    The cluster is one Node to routing and to projects; its members explain the
    node's aggregates (gpus, hardware, load, models) to the people who run it.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="members")
    member_id = models.CharField(max_length=64)  # the cluster's own id for the device, e.g. "node-002"
    name = models.CharField(max_length=200, blank=True)  # its hostname
    role = models.CharField(max_length=32, blank=True)  # "leader", "worker", … as the cluster says
    hardware = models.CharField(max_length=200, blank=True)
    gpus = models.PositiveIntegerField(default=0)
    ram_gb = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=32, blank=True)  # as the cluster reports it ("online", "offline", …)
    healthy = models.BooleanField(default=False)  # status == "online"
    load = models.FloatField(default=0.0)
    models_loaded = models.JSONField(default=list, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)  # when the cluster last heard from it
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "member_id"], name="nodemember_unique"),
            models.CheckConstraint(condition=models.Q(load__gte=0, load__lte=1), name="nodemember_load_range"),
        ]
        ordering = ["node", "member_id"]

    def __str__(self) -> str:
        return f"{self.member_id} of {self.node_id} ({self.status})"


class Job(models.Model):
    """Work that outlives a request, run by a Celery worker through a node adapter.

    A project's jobs (images, agent runs) are paid: reserved before they are queued and
    settled when they end. An operator's jobs (model pulls) are free and belong to the
    operator organization. Inputs and results can hold user content, so they are sealed
    (config.crypto, bound to the job); ``params`` and ``progress`` hold only metadata.
    Change a job only through nodes.jobs.
    """

    class Kind(models.TextChoices):
        MODEL_PULL = "model.pull"
        IMAGE = "image.generation"
        AGENT_RUN = "agent.run"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "job"), editable=False)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    project = models.ForeignKey("console.Project", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    operator = models.ForeignKey("console.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    # The paid request this job settles (gateway.RequestRecord / billing transfer), if any.
    request_id = models.CharField(max_length=40, blank=True)
    params = models.JSONField(default=dict, blank=True)  # metadata only: model, size, n, agent name…
    progress = models.JSONField(default=dict, blank=True)  # e.g. {"status", "completed", "total"}
    sealed_input = models.BinaryField(null=True, blank=True, editable=False)
    sealed_result = models.BinaryField(null=True, blank=True, editable=False)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Times a worker claimed it: a paid image job whose worker died mid-run is claimed once more.
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            # Exactly one owner: a project (paid work) or an operator (node management).
            models.CheckConstraint(
                condition=models.Q(project__isnull=False, operator__isnull=True)
                | models.Q(project__isnull=True, operator__isnull=False),
                name="job_one_owner",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="job_status_created")]

    def __str__(self) -> str:
        return f"{self.kind} {self.public_id} ({self.status})"


HEX_DIGEST = r"^[0-9a-f]{32,128}$"  # 16 to 64 bytes (SHA-256, SHA-384 as in SEV-SNP, SHA-512), lowercase


class AllowedMeasurement(models.Model):
    """A software measurement nodes may run: attestation refuses any other.

    Managed in the admin or through nodes.attestation.services (measurement_allow,
    measurement_revoke); revoking one takes the nodes attested with it out of rotation at once.
    """

    value = models.CharField(max_length=128, unique=True, help_text="Lowercase hex digest of the node's software")
    description = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(value__regex=HEX_DIGEST), name="allowedmeasurement_hex")]

    def __str__(self) -> str:
        return f"{self.value[:16]}… {self.description}".strip()


class Attestation(models.Model):
    """One challenge to a node and what came of it.

    Created ``pending`` with a fresh nonce; answered once (a conditional UPDATE from
    ``pending`` makes the nonce single use) with ``verified`` or ``failed``. A verified
    row keeps the evidence exactly as the node sent it, so anyone can check it again.
    Change it only through nodes.attestation.services.
    """

    class Result(models.TextChoices):
        PENDING = "pending"
        VERIFIED = "verified"
        FAILED = "failed"

    public_id = models.CharField(max_length=40, unique=True, default=partial(new_id, "att"), editable=False)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="attestations")
    nonce = models.CharField(max_length=128, unique=True)
    nonce_expires_at = models.DateTimeField()
    format = models.CharField(max_length=64, blank=True)
    result = models.CharField(max_length=16, choices=Result.choices, default=Result.PENDING)
    reason = models.CharField(max_length=64, blank=True, help_text="Why it failed, as a code (e.g. untrusted_chain)")
    detail = models.TextField(blank=True)
    measurement = models.CharField(max_length=128, blank=True)
    signing_key = models.CharField(max_length=64, blank=True)
    encryption_key = models.CharField(max_length=64, blank=True)
    root_fingerprint = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the trusted root's certificate")
    evidence = models.JSONField(null=True, blank=True)
    issued_at = models.DateTimeField(null=True, blank=True)  # the report's own time, where the format has one
    created_at = models.DateTimeField(auto_now_add=True)  # when the nonce was issued
    checked_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(result="verified")
                | models.Q(verified_at__isnull=False, expires_at__isnull=False, measurement__regex=HEX_DIGEST),
                name="attestation_verified_complete",
            ),
        ]
        indexes = [models.Index(fields=["node", "result", "-verified_at"], name="attestation_node_latest")]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.result})"


class NodeHealthEvent(models.Model):
    """A change of a node's health, written when it flips (``nodes.services.node_health_changed``):
    the history the public status page reads its incidents from (an incident runs from an
    unhealthy event to the node's next healthy one)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_events")
    healthy = models.BooleanField()
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["at"], name="nodehealthevent_at"),
            models.Index(fields=["node", "at"], name="nodehealthevent_node_at"),
        ]

    def __str__(self) -> str:
        return f"{self.node_id} {'healthy' if self.healthy else 'unhealthy'} at {self.at:%Y-%m-%d %H:%M:%S}"
