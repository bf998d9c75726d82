from __future__ import annotations

from functools import partial

from django.db import models

from config.ids import new_id


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
    adapter = models.CharField(max_length=32, default="openai")
    region = models.CharField(max_length=64, default="local")
    hardware = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    attestation = models.CharField(max_length=16, choices=Attestation.choices, default=Attestation.NONE)
    healthy = models.BooleanField(default=True)
    last_health_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


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
