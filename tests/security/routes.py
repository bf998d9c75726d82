"""The routes a live server answers, read from its URL confs (never listed by hand), so a test that
walks them cannot miss a new one."""
from __future__ import annotations

import re


def served_v1_routes() -> set[tuple[str, str]]:
    """(method, path) of every /v1 route (and /pki/public_key): the gateway's Starlette routes and
    the Django-served management API, with path parameters written ``{name}``."""
    from gateway.app import routes
    from gateway.management_urls import urlpatterns

    served = {(m, re.sub(r":\w+}", "}", r.path)) for r in routes for m in r.methods if m != "HEAD"}
    for pattern in urlpatterns:
        view = getattr(pattern.callback, "view_class", None)  # the catch-all 404 has none
        if view is not None:
            path = "/v1/" + re.sub(r"<\w+:(\w+)>", r"{\1}", str(pattern.pattern))
            served |= {(m.upper(), path) for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)}
    return served


def path_kwargs(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
