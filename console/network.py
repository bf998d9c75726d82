"""Reads for the console's network view and quickstart: the node network as an organization's
projects see it, and the models the organization may call now."""
from __future__ import annotations

from typing import Any

from django.utils import timezone

from billing import selectors as billing_selectors
from billing.models import BillingAccount
from nodes import selectors as node_selectors
from nodes.models import Node

from .models import Organization


def network_for(organization: Organization) -> dict[str, Any]:
    """The active nodes serving a priced model, by region, each marked with whether the
    organization's projects may be routed to it: a verified attestation (every project), no
    attestation (only projects that allow non-confidential nodes), else none."""
    now = timezone.now()
    nodes = node_selectors.network_nodes(now=now, models=billing_selectors.priced_models(now=now))
    projects = list(organization.projects.values_list("name", "allow_non_confidential"))
    open_projects = [name for name, allowed in projects if allowed]
    for node in nodes:
        if node["confidential"]:
            node["usable"], node["usable_note"] = True, "every project"
        elif node["attestation"] == Node.Attestation.NONE and open_projects:
            node["usable"], node["usable_note"] = True, "projects allowing non-confidential nodes: " + ", ".join(open_projects)
        else:
            node["usable"] = False
            node["usable_note"] = (
                "no project allows non-confidential nodes" if node["attestation"] == Node.Attestation.NONE
                else f"attestation {node['attestation']}: routed around"
            )
    regions = node_selectors.network_by_region(nodes)
    return {
        "regions": regions,
        "total": len(nodes),
        "up": sum(1 for n in nodes if n["healthy"]),
        "attested": sum(1 for n in nodes if n["confidential"]),
        "models": sorted({m for n in nodes for m in n["models"]}),
    }


def operated_organizations(user) -> list[dict[str, Any]]:
    """The caller's organizations that operate nodes and whose nodes they may see (the
    operator pages, ``console:org_nodes``), with counts."""
    from . import access

    out = []
    for membership in access.memberships(user):
        if not access.allowed(membership.role, "nodes.view"):
            continue
        nodes = list(Node.objects.filter(operator=membership.organization).values_list("healthy", "status"))
        if nodes:
            out.append({
                "organization": membership.organization,
                "total": len(nodes),
                "healthy": sum(1 for healthy, status in nodes if healthy and status == Node.Status.ACTIVE),
                "active": sum(1 for _, status in nodes if status == Node.Status.ACTIVE),
            })
    return out


def usable_models(organization: Organization) -> list[str]:
    """Models the organization may call now: priced, served by a healthy active node its projects
    may use, and within its plan (an empty plan list: every model)."""
    network = network_for(organization)
    served = sorted({m for r in network["regions"] for n in r["nodes"] if n["usable"] and n["healthy"] for m in n["models"]})
    account = BillingAccount.objects.filter(organization=organization).select_related("plan").first()
    allowed = set(account.plan.allowed_models) if account and account.plan and account.plan.allowed_models else None
    return [m for m in served if allowed is None or m in allowed]
