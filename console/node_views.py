"""Console pages for node operators: an organization's nodes and their jobs (model pulls) with progress.

Read-only: operators act through the API with node tokens, staff through Django admin.
Members with a role that manages the organization's infrastructure (owner, admin,
developer) see the page; finance members and outsiders get 404, as for any tenant object.
The jobs table refreshes itself: the page polls a fragment while a job is queued or running.
"""
from __future__ import annotations

from django.http import Http404
from django.shortcuts import render

from nodes import jobs as node_jobs
from nodes import selectors as node_selectors
from nodes.jobs import TERMINAL

from . import access, selectors
from .models import Organization, Role

NODE_VIEWERS = {Role.OWNER, Role.ADMIN, Role.DEVELOPER}
JOBS_SHOWN = 25


def _organization(request, org_id: str) -> Organization:
    organization = selectors.organizations_for_user(request.user).filter(public_id=org_id).first()
    if organization is None:
        raise Http404("No such organization")
    membership = selectors.membership_for(request.user, organization)
    if membership is None or membership.role not in NODE_VIEWERS:
        raise Http404("No such organization")
    return organization


def _jobs(organization: Organization) -> dict:
    rows = []
    for job in node_selectors.operator_jobs(operator_id=organization.id, limit=JOBS_SHOWN):
        rows.append({
            "job": job,
            "text": node_jobs.progress_text(job.progress),
            "percent": node_jobs.progress_percent(job.progress),
            "active": job.status not in TERMINAL,
        })
    return {"jobs": rows, "active": any(r["active"] for r in rows)}


@access.requires("nodes.view")
def organization_nodes(request, org_id: str):
    organization = _organization(request, org_id)
    nodes = list(node_selectors.operator_nodes(operator_id=organization.id))
    context = {"organization": organization, "nodes": nodes, **_jobs(organization),
               "tokens": list(node_selectors.operator_tokens(operator_id=organization.id)),
               "health_events": list(node_selectors.operator_health_events(operator_id=organization.id))}
    return render(request, "console/nodes.html", context)


@access.requires("nodes.view")
def organization_jobs(request, org_id: str):
    """The jobs table alone, for the page's polling."""
    organization = _organization(request, org_id)
    return render(request, "console/_node_jobs.html", {"organization": organization, **_jobs(organization)})
