"""Console pages for developers: the node network (``/console/nodes/``) and the quickstart
(``/console/quickstart/``). Reads only; the tenant is the caller's current organization."""
from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_GET

from . import access, network, quickstart


@require_GET
@access.requires("nodes.view")
def nodes_page(request):
    organization = request.access.organization
    context = {
        "organization": organization,
        "network": network.network_for(organization),
        "operated": network.operated_organizations(request.user),
    }
    return render(request, "console/network.html", context)


@require_GET
@access.requires("keys.view")
def quickstart_page(request):
    organization = request.access.organization
    models = network.usable_models(organization)
    model = request.GET.get("model") if request.GET.get("model") in models else (models[0] if models else "MODEL_NAME")
    project = organization.projects.order_by("created_at", "id").first()
    base = quickstart.base_url(request)
    context = {
        "organization": organization,
        "base_url": base,
        "api_base": f"{base}/v1",
        "model": model,
        "models": models,
        "project": project,
        "key_placeholder": quickstart.KEY_PLACEHOLDER,
        "snippets": quickstart.snippets(base=base, model=model),
    }
    return render(request, "console/quickstart.html", context)
