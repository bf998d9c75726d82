"""Helpers for the console page tests: sign in a tenant, write request records."""
from __future__ import annotations

import datetime as dt
import itertools

from django.utils import timezone

from gateway.models import RequestRecord

_ids = itertools.count(1)


def login(client, tenant) -> None:
    assert client.login(username=tenant.user.username, password="pw-" + tenant.user.username * 2)


def record(tenant, *, key=None, model="sim-small", cost=0, input_tokens=0, output_tokens=0, status=200,
           error_code="", at: dt.datetime | None = None, project=None, node_id="node_x", session_id="",
           endpoint="chat.completions", latency_ms=12) -> RequestRecord:
    project = project or tenant.project
    return RequestRecord.objects.create(
        request_id=f"req_test{next(_ids):06d}", organization=project.organization, project=project, api_key=key,
        endpoint=endpoint, model=model, node_id=node_id, status_code=status, error_code=error_code,
        input_tokens=input_tokens, output_tokens=output_tokens, cost=cost, session_id=session_id,
        latency_ms=latency_ms, created_at=at or timezone.now(),
    )
