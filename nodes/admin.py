"""Django admin for nodes and operators' node tokens.

Writes go through nodes.services (the registry cache of every gateway process is
invalidated on commit); credentials are write-only and token hashes never shown.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import transaction

from . import services
from .attestation import services as attestation_services
from .models import AllowedMeasurement, Attestation, Node, NodeModel, NodeToken


class NodeModelInline(admin.TabularInline):
    model = NodeModel
    extra = 1
    fields = ("model", "upstream_model", "context_window", "max_output_tokens", "input_modalities")


class NodeForm(forms.ModelForm):
    base_url = forms.URLField(max_length=500, assume_scheme="http", help_text=Node._meta.get_field("base_url").help_text)
    new_credentials = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Sent upstream as Authorization; stored sealed. Leave empty to keep the current ones.",
    )
    clear_credentials = forms.BooleanField(required=False)

    class Meta:
        model = Node
        fields = ("name", "operator", "base_url", "adapter", "region", "hardware", "gpus", "status", "attestation")
        help_texts = {
            "attestation": "'none': not confidential (a hosted provider, a plain server). 'unverified': confidential; "
            "it serves once it passes attestation. 'verified' is earned by attesting, never set here."
        }

    def clean_attestation(self):
        value = self.cleaned_data["attestation"]
        if value == Node.Attestation.VERIFIED and self.initial.get("attestation") != Node.Attestation.VERIFIED:
            raise forms.ValidationError("A node becomes verified only by passing attestation; choose 'unverified'.")
        return value


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    form = NodeForm
    inlines = [NodeModelInline]
    list_display = ("public_id", "name", "operator", "region", "status", "attestation", "healthy", "load", "last_heartbeat_at")
    list_filter = ("status", "attestation", "healthy", "region")
    search_fields = ("public_id", "name", "base_url")
    readonly_fields = (
        "public_id", "healthy", "load", "queue_depth", "models_loaded", "last_heartbeat_at", "last_health_at",
        "has_credentials", "attestation_expires_at", "signing_key", "encryption_key",
    )
    actions = ["attest_now"]

    @admin.display(boolean=True)
    def has_credentials(self, node: Node) -> bool:
        return bool(node.credentials)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        node = form.instance
        confidential = node.attestation != Node.Attestation.NONE
        if confidential and (not change or {"base_url", "adapter", "attestation"} & set(form.changed_data)):
            # A new address may be another machine: it serves nobody until it attests.
            attestation_services.node_attestation_reset(node=node)
        if form.cleaned_data.get("clear_credentials"):
            services.node_credentials_set(node=node, credentials=None)
        elif form.cleaned_data.get("new_credentials"):
            services.node_credentials_set(node=node, credentials=form.cleaned_data["new_credentials"])
        else:
            transaction.on_commit(lambda: services.bus.publish(services.NODES_TOPIC, node.public_id))


    @admin.action(description="Attest selected nodes now")
    def attest_now(self, request, queryset):
        nodes = [n for n in queryset if n.attestation != Node.Attestation.NONE]
        for node in nodes:
            attestation_services.attestation_enqueue(node=node)
        messages.info(request, f"Attestation queued for {len(nodes)} confidential node(s).")


class AllowedMeasurementForm(forms.ModelForm):
    class Meta:
        model = AllowedMeasurement
        fields = ("value", "description")

    def clean_value(self):
        try:
            return attestation_services.normalize_measurement(self.cleaned_data["value"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(AllowedMeasurement)
class AllowedMeasurementAdmin(admin.ModelAdmin):
    form = AllowedMeasurementForm
    list_display = ("value", "description", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("value", "description")
    fields = ("value", "description")
    actions = ["revoke", "allow"]

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("value", "active")

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["description"])
            return
        saved = attestation_services.measurement_allow(value=obj.value, description=obj.description)
        obj.pk, obj.active, obj.created_at = saved.pk, saved.active, saved.created_at

    @admin.action(description="Allow selected measurements again")
    def allow(self, request, queryset):
        for measurement in queryset:
            attestation_services.measurement_allow(value=measurement.value)

    @admin.action(description="Revoke selected measurements (nodes verified with them stop serving)")
    def revoke(self, request, queryset):
        taken_out = []
        for measurement in queryset:
            taken_out += attestation_services.measurement_revoke(measurement=measurement)
        messages.info(request, f"Revoked; nodes taken out of rotation: {', '.join(taken_out) or 'none'}.")


@admin.register(Attestation)
class AttestationAdmin(admin.ModelAdmin):
    """Read-only: records are written by nodes.attestation.services only."""

    list_display = ("public_id", "node", "result", "reason", "measurement", "created_at", "verified_at", "expires_at")
    list_filter = ("result", "reason", "format")
    search_fields = ("public_id", "node__public_id", "measurement")
    list_select_related = ("node",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(NodeToken)
class NodeTokenAdmin(admin.ModelAdmin):
    list_display = ("public_id", "name", "organization", "redacted", "status", "created_at", "revoked_at")
    list_filter = ("status",)
    search_fields = ("public_id", "name")
    fields = ("organization", "name")
    readonly_fields = ()
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return ("organization", "name") if obj is None else ("public_id", "organization", "name", "redacted", "status", "created_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("public_id", "organization", "redacted", "status", "created_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        token, plaintext = services.node_token_create(
            organization=form.cleaned_data["organization"], name=form.cleaned_data["name"], created_by=request.user
        )
        obj.pk, obj.public_id = token.pk, token.public_id
        messages.warning(request, f"Node token (shown once, store it now): {plaintext}")

    @admin.action(description="Revoke selected node tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            services.node_token_revoke(token=token)
