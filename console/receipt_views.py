"""The sealed requests' signed usage receipts as CSV (gateway/SEALED.md): each row has the exact
receipt bytes and signature (base64), the key they were checked with and the amount settled, so a
customer can check every charge against the node's signature offline."""
from __future__ import annotations

import base64
import csv
import datetime as dt

from django.http import HttpResponse

from gateway.models import UsageReceipt

from . import access
from .views import _usage_filter

CSV_HEADER = ["created_at", "project", "request_id", "node", "tier", "verified", "reason", "input_tokens",
              "output_tokens", "cost_micros", "signing_key", "receipt_b64", "signature_b64"]


@access.requires("usage.view")
def receipts_csv(request):
    flt, _ = _usage_filter(request)  # the usage page's organization, project and date range (ids checked: 404)
    receipts = UsageReceipt.objects.filter(
        project__organization=flt.organization,
        created_at__gte=dt.datetime.combine(flt.start, dt.time(), tzinfo=dt.UTC),
        created_at__lt=dt.datetime.combine(flt.end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC),
    ).select_related("project").order_by("created_at", "id")
    if flt.project is not None:
        receipts = receipts.filter(project=flt.project)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="receipts-{flt.organization.public_id}-{flt.start.isoformat()}-{flt.end.isoformat()}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for r in receipts.iterator():
        writer.writerow([
            r.created_at.astimezone(dt.UTC).isoformat(), r.project.public_id, r.request_id, r.node_id, r.tier,
            "true" if r.verified else "false", r.reason, r.input_tokens, r.output_tokens, r.cost, r.signing_key,
            base64.b64encode(bytes(r.receipt)).decode(), base64.b64encode(bytes(r.signature)).decode(),
        ])
    return response
