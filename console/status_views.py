"""The public status page (``/status/``) and its JSON (``/status.json``): no sign-in, no tenant data.

The checks live in ``console.status``; both pages read one cached snapshot of them.
"""
from __future__ import annotations

import datetime as dt

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from . import access, status

LABELS = {
    "gateway": "Gateway",
    "database": "Database",
    "redis": "Redis",
    "workers": "Background workers",
    "nodes": "Node network",
}


def _when(epoch: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC) if epoch is not None else None


def _headers(response):
    response["Cache-Control"] = f"public, max-age={status.STATUS_CACHE_SECONDS}"
    return response


@access.public
@require_GET
def status_page(request):
    snap = status.cached_snapshot()
    components = [{**c, "label": LABELS.get(c["name"], c["name"])} for c in snap["components"]]
    incidents = [{**i, "started": _when(i["started_at"]), "ended": _when(i["ended_at"])} for i in snap["incidents"]]
    context = {"snap": snap, "components": components, "incidents": incidents, "checked": _when(snap["checked_at"]),
               "window_days": status.INCIDENT_WINDOW.days, "refresh": 30}
    return _headers(render(request, "console/status.html", context, status=200))


@access.public
@require_GET
def status_json(request):
    return _headers(JsonResponse(status.cached_snapshot()))
