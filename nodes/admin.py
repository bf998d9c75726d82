"""Django admin for nodes and operators' node tokens.

Writes go through nodes.services (the registry cache of every gateway process is
invalidated on commit); credentials are write-only and token hashes never shown.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import transaction

from . import clusters, services
from .adapters import ADAPTERS
from .models import Node, NodeMember, NodeModel, NodeToken


class NodeModelInline(admin.TabularInline):
    model = NodeModel
    extra = 1
    fields = ("model", "upstream_model", "context_window", "max_output_tokens", "input_modalities")


class NodeMemberInline(admin.TabularInline):
    """A cluster's devices, as the cluster last reported them (nodes.clusters keeps them)."""

    model = NodeMember
    extra = 0
    can_delete = False
    fields = ("member_id", "name", "role", "hardware", "gpus", "ram_gb", "status", "healthy", "load", "models_loaded", "last_seen")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class NodeForm(forms.ModelForm):
    base_url = forms.URLField(max_length=500, assume_scheme="http", help_text=Node._meta.get_field("base_url").help_text)
    cluster_url = forms.URLField(
        max_length=500, required=False, assume_scheme="http", help_text=Node._meta.get_field("cluster_url").help_text
    )
    new_credentials = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Sent upstream as Authorization; stored sealed. Leave empty to keep the current ones.",
    )
    clear_credentials = forms.BooleanField(required=False)
    adapter = forms.ChoiceField(
        choices=lambda: [(kind, kind) for kind in sorted(ADAPTERS)],
        help_text="provider-* kinds are hosted APIs (not confidential, never attested, need credentials: the API key); "
        "provider-anthropic takes the API root as base URL (https://api.anthropic.com).",
    )

    class Meta:
        model = Node
        fields = ("name", "operator", "base_url", "cluster_url", "adapter", "region", "hardware", "gpus", "status", "attestation")

    def clean(self):
        data = super().clean()
        adapter = data.get("adapter")
        if not services.is_provider(adapter or ""):
            return data
        if data.get("attestation") != Node.Attestation.NONE:
            self.add_error("attestation", f"A {adapter} node is a hosted provider: it cannot be attested; choose 'none'.")
        has_key = bool(self.instance.credentials) and not data.get("clear_credentials")
        if not data.get("new_credentials") and not has_key:
            self.add_error("new_credentials", f"A {adapter} node needs credentials: the provider's API key.")
        self.instance.attestation_expires_at = None
        return data


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    form = NodeForm
    inlines = [NodeModelInline, NodeMemberInline]
    list_display = ("public_id", "name", "operator", "region", "status", "attestation", "healthy", "load", "last_heartbeat_at")
    list_filter = ("status", "attestation", "healthy", "region")
    search_fields = ("public_id", "name", "base_url")
    readonly_fields = ("public_id", "healthy", "load", "queue_depth", "models_loaded", "last_heartbeat_at", "last_health_at", "has_credentials")
    actions = ["sync_clusters"]

    @admin.action(description="Read the selected clusters now (thox nodes: members, gpus, load, models)")
    def sync_clusters(self, request, queryset):
        for node in queryset.filter(adapter=clusters.KIND):
            if clusters.cluster_sync(node=node) is None:
                messages.warning(request, f"{node}: the cluster API did not answer.")

    @admin.display(boolean=True)
    def has_credentials(self, node: Node) -> bool:
        return bool(node.credentials)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        node = form.instance
        if form.cleaned_data.get("clear_credentials"):
            services.node_credentials_set(node=node, credentials=None)
        elif form.cleaned_data.get("new_credentials"):
            services.node_credentials_set(node=node, credentials=form.cleaned_data["new_credentials"])
        else:
            transaction.on_commit(lambda: services.bus.publish(services.NODES_TOPIC, node.public_id))


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
