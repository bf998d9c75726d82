"""Django admin for nodes and operators' node tokens.

Writes go through nodes.services (the registry cache of every gateway process is
invalidated on commit); credentials are write-only and token hashes never shown.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils.html import format_html

from . import clusters, jobs, model_management, services
from .adapters import ADAPTERS, NodeError
from .attestation import services as attestation_services
from .models import AllowedMeasurement, Attestation, Job, Node, NodeMember, NodeModel, NodeToken


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
        help_texts = {
            "attestation": "'none': not confidential (a hosted provider, a plain server). 'unverified': confidential; "
            "it serves once it passes attestation. 'verified' is earned by attesting, never set here."
        }

    def clean_attestation(self):
        value = self.cleaned_data["attestation"]
        if value == Node.Attestation.VERIFIED and self.initial.get("attestation") != Node.Attestation.VERIFIED:
            raise forms.ValidationError("A node becomes verified only by passing attestation; choose 'unverified'.")
        return value

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


class ModelActionForm(forms.Form):
    """What the "load / unload / pull a model" actions ask for before they run."""

    model = forms.CharField(max_length=200, help_text="A model the node serves, or the backend's own name (e.g. llama3.2:1b).")


class PullForm(ModelActionForm):
    serve = forms.BooleanField(required=False, help_text="Serve the model once pulled (adds it to the node's models).")
    served_model = forms.CharField(max_length=200, required=False, help_text="Public name; default: the pulled name.")
    context_window = forms.IntegerField(min_value=1, required=False, initial=4096)
    max_output_tokens = forms.IntegerField(min_value=1, required=False, initial=1024)


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    form = NodeForm
    inlines = [NodeModelInline, NodeMemberInline]
    actions = ["load_model", "unload_model", "pull_model", "sync_clusters", "attest_now"]
    list_display = ("public_id", "name", "operator", "region", "status", "attestation", "healthy", "load", "last_heartbeat_at")
    list_filter = ("status", "attestation", "healthy", "region")
    search_fields = ("public_id", "name", "base_url")
    readonly_fields = (
        "public_id", "healthy", "load", "queue_depth", "models_loaded", "last_heartbeat_at", "last_health_at",
        "has_credentials", "attestation_expires_at", "signing_key", "encryption_key",
    )

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

    # Model management: the same services as POST /v1/nodes/{id}/models/*, after a form asks which model.

    def _model_form(self, request, queryset, form_class, title: str):
        """The bound, valid form once the admin applied it; else the page that asks (returned as the response)."""
        if "apply" in request.POST:
            form = form_class(request.POST)
            if form.is_valid():
                return form, None
        else:
            form = form_class()
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "form": form,
            "nodes": queryset,
            "action": request.POST["action"],
            "checkbox_name": ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return None, TemplateResponse(request, "admin/nodes/node/model_action.html", context)

    def _change_loaded(self, request, queryset, action: str):
        call = model_management.model_load if action == "load" else model_management.model_unload
        form, page = self._model_form(request, queryset, ModelActionForm, f"{action.title()} a model")
        if page is not None:
            return page
        model = form.cleaned_data["model"]
        for node in queryset:
            try:
                loaded = model_management.run_sync(call, node=node, model=model)
            except NodeError as exc:
                self.message_user(request, f"{node}: {action} {model} failed: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{node}: {action}ed {model}; loaded now: {', '.join(loaded) or 'none'}.")
        return None

    @admin.action(description="Load a model on selected nodes")
    def load_model(self, request, queryset):
        return self._change_loaded(request, queryset, "load")

    @admin.action(description="Unload a model from selected nodes")
    def unload_model(self, request, queryset):
        return self._change_loaded(request, queryset, "unload")

    @admin.action(description="Pull a model onto selected nodes (a job)")
    def pull_model(self, request, queryset):
        form, page = self._model_form(request, queryset, PullForm, "Pull a model")
        if page is not None:
            return page
        data = form.cleaned_data
        serve = None
        if data["serve"]:
            serve = {"model": data["served_model"] or None, "context_window": data["context_window"] or 4096,
                     "max_output_tokens": data["max_output_tokens"] or 1024}
        for node in queryset:
            if not model_management.supports(node, "pull_model"):
                self.message_user(request, f"{node}: its backend ({node.adapter}) cannot pull models.", messages.ERROR)
                continue
            try:
                job = model_management.model_pull_create(node=node, model=data["model"], serve=serve)
            except ValueError as exc:
                self.message_user(request, f"{node}: {exc}.", messages.ERROR)
                continue
            self.message_user(request, format_html(
                '{}: pulling {} as job <a href="../job/{}/change/">{}</a>.', node, data["model"], job.id, job.public_id
            ))
        return None


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


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs are written only by nodes.jobs: read-only here (inputs and results stay sealed)."""

    list_display = ("public_id", "kind", "status", "node", "operator", "project", "progress_text", "error_code", "created_at")
    list_filter = ("kind", "status")
    search_fields = ("public_id", "node__public_id")
    list_select_related = ("node", "operator", "project")
    fields = ("public_id", "kind", "status", "node", "operator", "project", "request_id", "params", "progress",
              "error_code", "error_message", "created_at", "started_at", "finished_at")
    readonly_fields = fields

    @admin.display(description="progress")
    def progress_text(self, job: Job) -> str:
        return jobs.progress_text(job.progress)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
