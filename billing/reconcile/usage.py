"""Check 2, usage against the ledger, for one UTC day.

The gateway writes a request's record (``gateway.RequestRecord``: tokens, the
price version, the cost it posted, the transfer it reserved) in the same
round trip as the settlement or void of that transfer. So for every usage
transfer finished (posted or voided) on the day:

* a posted transfer has exactly one record naming it, at the transfer's own
  price version (same model, same version), with the same tokens, and its
  amount is what those tokens cost at that version (``pricing.cost_micros``,
  capped at the reservation as the gateway does; image jobs: images produced ×
  the version's price per image of the job's size); the record says the same cost;
* one request id is charged once: a second posted usage transfer for the same
  (project, request id) is a double charge;
* a voided transfer charged nothing, so a record naming it with a cost is a
  request whose charge is missing.

And every record of the day that names a transfer not finished that day must
find it posted (or voided at cost 0) on its own day: one whose transfer is
missing or still pending was served without being charged.

Totals per model (what the tokens cost, what was charged) go in the summary.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from cryptography.exceptions import InvalidTag
from django.db.models import Count

from billing.invariants import Problem
from billing.models import ImagePrice, ModelPrice, Transfer
from billing.pricing import Price, Usage, cost_micros

CHUNK = 1000


class _Prices:
    """Price versions by (model, version) and by id, loaded once per run."""

    def __init__(self) -> None:
        per_image: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for price_id, size, amount in ImagePrice.objects.order_by("size").values_list("price_id", "size", "per_image"):
            per_image[price_id].append((size, amount))
        self.by_id: dict[int, Price] = {}
        self.by_version: dict[tuple[str, int], Price] = {}
        for p in ModelPrice.objects.all():
            price = Price(p.id, p.model, p.version, p.currency, p.input_per_mtok, p.cached_input_per_mtok,
                          p.output_per_mtok, p.effective_from, per_image=tuple(per_image.get(p.id, ())))
            self.by_id[p.id] = price
            self.by_version[(p.model, p.version)] = price


def _images_made(*, request_id: str, project_id: int) -> tuple[int, str] | None:
    """(images produced, size) of the image job behind a request, or None if it cannot be read."""
    from nodes import jobs
    from nodes.models import Job

    job = Job.objects.filter(request_id=request_id, project_id=project_id, kind=Job.Kind.IMAGE).first()
    if job is None:
        return None
    try:
        result = jobs.job_result(job=job) or {}
    except (InvalidTag, ValueError):  # a key rotated away, a damaged blob: say we could not verify
        return None
    return len(result.get("images") or []), str(job.params.get("size", ""))


def _expected(price: Price, record, transfer: Transfer) -> tuple[int | None, str]:
    """What the record's usage costs at ``price`` (capped at the hold), or None and why not."""
    if price.per_image:
        made = _images_made(request_id=record.request_id, project_id=record.project_id)
        if made is None:
            return None, "the image job behind the request (and so its image count) could not be read"
        count, size = made
        unit = price.image_price(size)
        if unit is None:
            return None, f"price version {price.version} of {price.model} has no price for {size} images"
        cost = count * unit
    else:
        try:
            usage = Usage(record.input_tokens, record.output_tokens, record.cached_input_tokens)
        except ValueError as exc:
            return None, f"the request's token counts are impossible ({exc})"
        cost = cost_micros(price, usage)
    # The gateway bills the reservation when a node reports more than was reserved.
    return min(cost, transfer.pending_amount), ""


def usage_findings(
    *, start: dt.datetime, end: dt.datetime, now: dt.datetime | None = None
) -> tuple[list[Problem], dict[str, Any]]:
    from gateway.models import RequestRecord

    prices = _Prices()
    findings: list[Problem] = []
    per_model: dict[str, dict[str, int]] = defaultdict(
        lambda: {"requests": 0, "expected": 0, "charged": 0, "unverified": 0}
    )
    seen_records: set[int] = set()
    counts = {"transfers_posted": 0, "transfers_voided": 0, "records": 0}

    transfers = (
        Transfer.objects.filter(kind=Transfer.Kind.USAGE, finished_at__gte=start, finished_at__lt=end)
        .exclude(status=Transfer.Status.PENDING)
        .order_by("id")
    )
    ids = list(transfers.values_list("id", flat=True))
    for offset in range(0, len(ids), CHUNK):
        chunk = list(Transfer.objects.filter(id__in=ids[offset:offset + CHUNK]).order_by("id"))
        records = defaultdict(list)
        # (project, request_id) is indexed; the transfer id then picks the record.
        for record in RequestRecord.objects.filter(
            project_id__in={t.project_id for t in chunk}, request_id__in={t.request_id for t in chunk}
        ):
            records[record.transfer_id].append(record)
        for t in chunk:
            mine = [r for r in records.get(t.id, []) if r.request_id == t.request_id and r.project_id == t.project_id]
            seen_records.update(r.id for r in mine)
            counts["records"] += len(mine)
            if t.status == Transfer.Status.VOIDED:
                counts["transfers_voided"] += 1
                for r in mine:
                    if r.cost:
                        findings.append(_record_without_charge(r, t, "its transfer was voided"))
                continue
            counts["transfers_posted"] += 1
            findings += _posted_transfer_findings(t, mine, prices, per_model)
    findings += _double_charges(start=start, end=end)

    # Records of the day whose transfer did not finish that day.
    others = (
        RequestRecord.objects.filter(created_at__gte=start, created_at__lt=end, transfer_id__isnull=False)
        .exclude(id__in=seen_records)
        .order_by("id")
    )
    for record in others.iterator(chunk_size=CHUNK):
        t = Transfer.objects.filter(id=record.transfer_id, kind=Transfer.Kind.USAGE).first()
        if t is None or t.status == Transfer.Status.PENDING:
            why = "no usage transfer has its id" if t is None else "its transfer is still pending"
            findings.append(_record_without_charge(record, t, why))
        elif t.status == Transfer.Status.VOIDED and record.cost:
            findings.append(_record_without_charge(record, t, "its transfer was voided"))
        # Otherwise it finished on another day and is checked with that day.

    summary = {
        **counts,
        # charged = expected + unverified + difference; difference != 0 only with findings above.
        "per_model": {
            model: dict(v, difference=v["charged"] - v["expected"] - v["unverified"])
            for model, v in sorted(per_model.items())
        },
        "expected_total": sum(v["expected"] for v in per_model.values()),
        "charged_total": sum(v["charged"] for v in per_model.values()),
    }
    return findings, summary


def _refs(t: Transfer | None, record=None) -> dict[str, Any]:
    refs: dict[str, Any] = {}
    if t is not None:
        refs.update(transfer=t.id, request_id=t.request_id, project=t.project_id, model=t.model)
    if record is not None:
        refs.update(request_record=record.id, request_id=record.request_id, project=record.project_id,
                    model=record.model, price_version=record.price_version)
    return refs


def _record_without_charge(record, t: Transfer | None, why: str) -> Problem:
    return Problem(
        "request_without_transfer",
        f"request {record.request_id} recorded a cost of {record.cost} but {why}",
        amount=-record.cost,
        references={**_refs(t, record), "recorded_cost": record.cost,
                    "transfer_status": t.status if t is not None else None},
    )


def _posted_transfer_findings(t: Transfer, records: list, prices: _Prices, per_model) -> list[Problem]:
    price = prices.by_id.get(t.price_id) if t.price_id else None
    model = price.model if price else t.model
    totals = per_model[model]
    totals["requests"] += 1
    totals["charged"] += t.amount
    if not records:
        return [Problem(
            "transfer_without_request",
            f"usage transfer {t.id} posted {t.amount} but no request record names it",
            amount=t.amount, references=_refs(t), currency=t.currency,
        )]
    if len(records) > 1:
        totals["unverified"] += t.amount
        return [Problem(
            "duplicate_request_record",
            f"usage transfer {t.id} is named by {len(records)} request records",
            amount=0, references={**_refs(t), "request_records": [r.id for r in records]}, currency=t.currency,
        )]
    (record,) = records
    recorded = prices.by_version.get((record.model, record.price_version)) if record.price_version else None
    if price is None or recorded is None or recorded.id != price.id:
        return [Problem(
            "price_version_mismatch",
            f"request {record.request_id} was recorded at {record.model} v{record.price_version} "
            f"but its transfer {t.id} was charged at "
            + (f"{price.model} v{price.version}" if price else "no price version"),
            amount=0,
            references={**_refs(t, record), "transfer_price": t.price_id,
                        "transfer_price_version": price.version if price else None},
            currency=t.currency,
        )]
    expected, why = _expected(recorded, record, t)
    if expected is None:
        totals["unverified"] += t.amount
        return [Problem("usage_unverifiable", f"usage transfer {t.id}: {why}", amount=0,
                        references=_refs(t, record), currency=t.currency)]
    totals["expected"] += expected
    problems = []
    tokens = (record.input_tokens, record.cached_input_tokens, record.output_tokens)
    if t.amount != expected or record.cost != t.amount or tokens != (t.input_tokens, t.cached_input_tokens, t.output_tokens):
        problems.append(Problem(
            "charge_mismatch",
            f"request {record.request_id}: {record.input_tokens} in ({record.cached_input_tokens} cached) / "
            f"{record.output_tokens} out at {recorded.model} v{recorded.version} cost {expected}, "
            f"the ledger charged {t.amount} and the record says {record.cost}",
            amount=t.amount - expected,
            references={**_refs(t, record), "expected": expected, "charged": t.amount, "recorded_cost": record.cost,
                        "record_tokens": list(tokens),
                        "transfer_tokens": [t.input_tokens, t.cached_input_tokens, t.output_tokens]},
            currency=t.currency,
        ))
    return problems


def _double_charges(*, start: dt.datetime, end: dt.datetime) -> list[Problem]:
    """A request id charged by more than one posted usage transfer (any of them on the day)."""
    day_requests = Transfer.objects.filter(
        kind=Transfer.Kind.USAGE, status=Transfer.Status.POSTED, finished_at__gte=start, finished_at__lt=end
    ).values("project_id", "request_id")
    dupes = (
        Transfer.objects.filter(kind=Transfer.Kind.USAGE, status=Transfer.Status.POSTED,
                                request_id__in=day_requests.values("request_id"))
        .values("project_id", "request_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    problems = []
    for row in dupes:
        charged = list(
            Transfer.objects.filter(kind=Transfer.Kind.USAGE, status=Transfer.Status.POSTED,
                                    project_id=row["project_id"], request_id=row["request_id"])
            .order_by("id").values_list("id", "amount")
        )
        problems.append(Problem(
            "duplicate_charge",
            f"request {row['request_id']} was charged by {len(charged)} posted usage transfers",
            amount=sum(amount for _, amount in charged[1:]),
            references={"request_id": row["request_id"], "project": row["project_id"],
                        "transfers": [transfer_id for transfer_id, _ in charged]},
        ))
    return problems
