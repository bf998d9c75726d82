"""Usage reads for the console: spend and requests per project, per key, per day/model/key,
and the request log. Every aggregation runs in the database and is scoped by the caller's
organization (and project); nothing here trusts an id without that scope.

Money is integer micro-units throughout (``RequestRecord.cost``)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from gateway.models import RequestRecord

from .models import ApiKey, Organization, Project

# Keys the keys page manages; a Web Chat key (another kind) is shown in usage only, labelled so.
WEBCHAT_KIND = ApiKey.Kind.WEBCHAT
WEBCHAT_LABEL = "Web Chat"
MAX_RANGE_DAYS = 366

_SUMS = {
    "requests": Count("id"),
    "input_tokens": Coalesce(Sum("input_tokens"), 0),
    "output_tokens": Coalesce(Sum("output_tokens"), 0),
    "cost": Coalesce(Sum("cost"), 0),
}


def month_start(now: dt.datetime | None = None) -> dt.datetime:
    """The start of the current calendar month, UTC (spend caps count by it too)."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def project_month_totals(organization: Organization, *, since: dt.datetime | None = None) -> dict[int, dict]:
    """{project id: {"requests", "cost"}} this month for the organization's projects, one query."""
    rows = (
        RequestRecord.objects.filter(
            organization=organization, created_at__gte=since or month_start(),
            project_id__in=list(organization.projects.values_list("id", flat=True)),  # the (project, time) index
        )
        .values("project_id")
        .annotate(requests=Count("id"), cost=Coalesce(Sum("cost"), 0))
        .order_by()
    )
    return {row["project_id"]: row for row in rows}


def key_stats(project: Project, *, since: dt.datetime | None = None) -> dict[int, dict]:
    """{key id: {"last_used", "month_spend", "month_requests"}} for the project's keys: one aggregate query."""
    since = since or month_start()
    rows = (
        RequestRecord.objects.filter(project=project, api_key__isnull=False)
        .values("api_key_id")
        .annotate(
            last_used=Max("created_at"),
            month_spend=Coalesce(Sum("cost", filter=Q(created_at__gte=since)), 0),
            month_requests=Count("id", filter=Q(created_at__gte=since)),
        )
        .order_by()
    )
    return {row["api_key_id"]: row for row in rows}


def key_label(key: ApiKey | None) -> str:
    if key is None:
        return "(deleted key)"
    if key.kind == WEBCHAT_KIND:
        return WEBCHAT_LABEL
    return f"{key.name or 'unnamed'} ({key.redacted})"


@dataclass
class UsageFilter:
    organization: Organization
    start: dt.date
    end: dt.date  # inclusive
    project: Project | None = None
    key: ApiKey | None = None
    model: str = ""

    @cached_property
    def project_ids(self) -> list[int]:
        return list(self.organization.projects.values_list("id", flat=True))

    @property
    def since(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time.min, tzinfo=dt.UTC)

    @property
    def until(self) -> dt.datetime:
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)

    def records(self) -> QuerySet[RequestRecord]:
        rows = RequestRecord.objects.filter(
            organization=self.organization, created_at__gte=self.since, created_at__lt=self.until
        )
        if self.project is not None:
            rows = rows.filter(project=self.project)
        else:  # by project too, so the (project, created_at) index serves it
            rows = rows.filter(project_id__in=self.project_ids)
        if self.key is not None:
            rows = rows.filter(api_key=self.key)
        if self.model:
            rows = rows.filter(model=self.model)
        return rows

    def query(self) -> dict[str, str]:
        """The filter as query parameters (for links: CSV export, the request log)."""
        out = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        if self.project is not None:
            out["project"] = self.project.public_id
        if self.key is not None:
            out["key"] = self.key.public_id
        if self.model:
            out["model"] = self.model
        return out


@dataclass
class Usage:
    totals: dict
    days: list[dict]
    models: list[dict]
    keys: list[dict]
    chart: dict = field(default_factory=dict)


def usage(flt: UsageFilter) -> Usage:
    """Totals and the breakdowns per day (every day of the range, zeros included), model and key."""
    rows = flt.records()
    totals = rows.aggregate(**_SUMS)
    by_day = {
        row["day"]: row
        for row in rows.annotate(day=TruncDate("created_at", tzinfo=dt.UTC)).values("day").annotate(**_SUMS).order_by()
    }
    days = []
    day = flt.start
    while day <= flt.end:
        row = by_day.get(day) or {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost": 0}
        days.append({"day": day, **{k: row[k] for k in _SUMS}})
        day += dt.timedelta(days=1)
    models = list(rows.values("model").annotate(**_SUMS).order_by("-cost", "model"))
    key_rows = list(rows.values("api_key_id").annotate(**_SUMS).order_by("-cost", "api_key_id"))
    names = ApiKey.objects.in_bulk([r["api_key_id"] for r in key_rows if r["api_key_id"]])
    for row in key_rows:
        key = names.get(row["api_key_id"])
        row["key"] = key
        row["label"] = key_label(key)
        row["public_id"] = key.public_id if key else ""
    chart = {
        "days": [d["day"].isoformat() for d in days],
        "requests": [d["requests"] for d in days],
        "input_tokens": [d["input_tokens"] for d in days],
        "output_tokens": [d["output_tokens"] for d in days],
        "cost": [d["cost"] for d in days],
        "models": [m["model"] or "(none)" for m in models],
        "model_cost": [m["cost"] for m in models],
        "model_requests": [m["requests"] for m in models],
    }
    return Usage(totals=totals, days=days, models=models, keys=key_rows, chart=chart)


def csv_rows(flt: UsageFilter) -> list[dict]:
    """The filtered usage per day, project, model and key (the CSV export), oldest first."""
    rows = (
        flt.records()
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values("day", "project__public_id", "model", "api_key_id")
        .annotate(**_SUMS)
        .order_by("day", "project__public_id", "model", "api_key_id")
    )
    rows = list(rows)
    names = ApiKey.objects.in_bulk([r["api_key_id"] for r in rows if r["api_key_id"]])
    for row in rows:
        key = names.get(row["api_key_id"])
        row["key"] = key
        row["label"] = key_label(key)
    return rows


def dollars(micros: int) -> str:
    """Exact decimal dollars from micro-units: 1_234_567 → "1.234567" (no float)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(int(micros)), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


# --- request log -------------------------------------------------------------------------------

# Failed: an error status, or an error after a 200 began (a stream cut by its node).
STATUS_FILTERS = {"ok": Q(status_code__lt=400, error_code=""), "failed": Q(status_code__gte=400) | ~Q(error_code="")}


def failed(record: RequestRecord) -> bool:
    return record.status_code >= 400 or bool(record.error_code)


def request_log(project: Project, *, status: str = "", model: str = "", key: ApiKey | None = None) -> QuerySet:
    rows = RequestRecord.objects.filter(project=project).select_related("api_key")
    if status in STATUS_FILTERS:
        rows = rows.filter(STATUS_FILTERS[status])
    if model:
        rows = rows.filter(model=model)
    if key is not None:
        rows = rows.filter(api_key=key)
    return rows.order_by("-created_at", "-id")


def models_used(organization: Organization, *, project: Project | None = None, since: dt.datetime,
                until: dt.datetime | None = None) -> list[str]:
    """Model names seen in the organization's (or project's) records since then, for filter pickers."""
    ids = [project.id] if project is not None else list(organization.projects.values_list("id", flat=True))
    rows = RequestRecord.objects.filter(organization=organization, project_id__in=ids, created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    return sorted(m for m in rows.exclude(model="").values_list("model", flat=True).distinct().order_by())


BUNDLE_WINDOW = dt.timedelta(minutes=1)


def troubleshooting_bundle(record: RequestRecord, project: Project) -> str:
    """What support needs to find a failed request, as text to paste: ids, model, node, the
    time window, status and error code. No key, no body, nothing secret."""
    at = record.created_at.astimezone(dt.UTC)

    def iso(moment: dt.datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    lines = [
        "Troubleshooting bundle",
        f"request_id: {record.request_id}",
        f"session_id: {record.session_id or '-'}",
        f"project: {project.public_id}",
        f"endpoint: {record.endpoint or '-'}",
        f"model: {record.model or '-'}",
        f"node: {record.node_id or '-'}",
        f"time: {iso(at)}",
        f"window: {iso(at - BUNDLE_WINDOW)} .. {iso(at + BUNDLE_WINDOW)}",
        f"status: {record.status_code}",
        f"error_code: {record.error_code or '-'}",
    ]
    return "\n".join(lines)
