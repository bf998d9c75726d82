"""Template context for every page: the navigation the caller may use.

A link appears only when its URL exists and the caller's role holds its
permission; pages still check for themselves (``console.access``).
"""
from __future__ import annotations

from django.urls import NoReverseMatch, reverse

from . import access

# (label, url name, permission or None for any signed-in user)
NAV = [
    ("Dashboard", "console:dashboard", None),
    ("Chat", "console:chat", "chat.use"),
    ("Usage", "console:usage", "usage.view"),
    ("Billing", "console:billing", "billing.view"),
    ("Members", "console:members", "members.view"),
    ("Nodes", "console:nodes", "nodes.view"),
    ("Quickstart", "console:quickstart", "keys.view"),
]


def _url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    rows = list(access.memberships(user))
    if not rows:
        return {"nav_links": [], "nav_orgs": []}
    chosen = request.session.get(access.SESSION_ORG)
    current = next((m for m in rows if m.organization.public_id == chosen), rows[0])
    links = []
    for label, name, permission in NAV:
        url = _url(name)
        if url and (permission is None or access.allowed(current.role, permission)):
            active = request.path == url or (url != "/console/" and request.path.startswith(url))
            links.append({"label": label, "url": url, "active": active})
    if user.is_staff:
        url = _url("console:finance")
        if url:
            links.append({"label": "Finance", "url": url, "active": request.path.startswith(url)})
    return {
        "nav_links": links,
        "nav_orgs": [m.organization for m in rows],
        "nav_org": current.organization,
        "nav_role": current.role,
        "nav_perms": access.OrgAccess(current.organization, current.role).permissions,
    }
