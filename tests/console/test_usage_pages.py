"""Usage page (aggregates per day/model/key, filters, CSV with exact micro-units, tenant scope) and
the request log (filters, pagination, the troubleshooting bundle of a failed request)."""
from __future__ import annotations

import csv
import datetime as dt
import io

from django.utils import timezone

from console import services, usage
from console.models import ApiKey
from tests.console.pages import login, record

DAY = dt.date(2026, 11, 10)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def seed(alice, charlie):
    secret = ApiKey.objects.get(project=alice.project, kind="secret")
    pk = ApiKey.objects.get(project=alice.project, kind="publishable")
    other = services.project_create(organization=alice.organization, name="Other")
    record(alice, key=secret, model="m-a", cost=1_000_001, input_tokens=10, output_tokens=5, at=at(DAY, 0))
    record(alice, key=secret, model="m-a", cost=2_000_000, input_tokens=20, output_tokens=7, at=at(DAY, 23))
    record(alice, key=pk, model="m-b", cost=333, input_tokens=3, output_tokens=1, at=at(DAY + dt.timedelta(days=2)))
    record(alice, key=None, model="m-b", cost=5, input_tokens=1, output_tokens=1, at=at(DAY), project=other,
           status=502, error_code="upstream_unavailable")
    record(alice, key=secret, model="m-a", cost=999_999_999, at=at(DAY - dt.timedelta(days=1)))  # before the range
    record(charlie, model="m-a", cost=77_777_777, at=at(DAY))  # another tenant
    return secret, pk, other


def get(client, alice, **params):
    query = {"org": alice.organization.public_id, "from": DAY.isoformat(),
             "to": (DAY + dt.timedelta(days=2)).isoformat(), **params}
    return client.get("/console/usage/", query)


def test_aggregates_per_day_model_and_key_in_the_database(client, alice, charlie, django_assert_max_num_queries):
    secret, pk, _ = seed(alice, charlie)
    flt = usage.UsageFilter(alice.organization, DAY, DAY + dt.timedelta(days=2))
    with django_assert_max_num_queries(6):  # project ids, totals, per day, per model, per key, key names
        data = usage.usage(flt)
    assert data.totals == {"requests": 4, "input_tokens": 34, "output_tokens": 14, "cost": 3_000_339}
    assert [(d["day"], d["requests"], d["cost"]) for d in data.days] == [
        (DAY, 3, 3_000_006), (DAY + dt.timedelta(days=1), 0, 0), (DAY + dt.timedelta(days=2), 1, 333)]
    assert [(m["model"], m["requests"], m["input_tokens"], m["output_tokens"], m["cost"]) for m in data.models] == [
        ("m-a", 2, 30, 12, 3_000_001), ("m-b", 2, 4, 2, 338)]
    assert {(k["public_id"], k["cost"]) for k in data.keys} == {(secret.public_id, 3_000_001), (pk.public_id, 333), ("", 5)}
    assert data.chart["cost"] == [3_000_006, 0, 333] and data.chart["requests"] == [3, 0, 1]

    login(client, alice)
    html = get(client, alice).content.decode()
    assert 'data-testid="total-requests">4<' in html and 'data-micros="3000339"' in html and "3.000339 USD" in html
    day_row = html.split(f'data-day="{DAY.isoformat()}"')[1].split("</tr>")[0]
    assert "<td>3</td><td>31</td><td>13</td>" in day_row and "3.000006 USD" in day_row
    assert 'id="usage-chart-data"' in html and "chart.umd.min.js" in html and "cdn" not in html.lower()


def test_filters_by_project_key_model_and_dates(client, alice, charlie):
    secret, pk, other = seed(alice, charlie)
    login(client, alice)
    html = get(client, alice, project=other.public_id).content.decode()
    assert 'data-testid="total-requests">1<' in html and 'data-micros="5"' in html
    html = get(client, alice, key=pk.public_id).content.decode()
    assert 'data-testid="total-requests">1<' in html and 'data-testid="total-cost" data-micros="333"' in html
    html = get(client, alice, model="m-a").content.decode()
    assert 'data-testid="total-cost" data-micros="3000001"' in html
    html = get(client, alice, **{"from": (DAY + dt.timedelta(days=1)).isoformat()}).content.decode()
    assert 'data-testid="total-requests">1<' in html
    # A key of another project of the organization does not match the project filter.
    assert get(client, alice, project=other.public_id, key=secret.public_id).status_code == 404


def test_other_tenants_ids_are_404_and_never_counted(client, alice, charlie):
    seed(alice, charlie)
    charlie_key = ApiKey.objects.get(project=charlie.project, kind="secret")
    login(client, alice)
    assert get(client, alice, project=charlie.project.public_id).status_code == 404
    assert get(client, alice, key=charlie_key.public_id).status_code == 404
    assert client.get("/console/usage.csv", {"org": alice.organization.public_id,
                                             "project": charlie.project.public_id}).status_code == 404
    assert client.get("/console/usage/", {"org": charlie.organization.public_id}).status_code == 404
    assert "77.777777" not in get(client, alice).content.decode()
    assert client.get(f"/console/projects/{charlie.project.public_id}/requests/").status_code == 404


def test_csv_export_has_the_same_filtered_data_in_exact_micro_units(client, alice, charlie):
    secret, _, _ = seed(alice, charlie)
    login(client, alice)
    response = client.get("/console/usage.csv", {"org": alice.organization.public_id, "from": DAY.isoformat(),
                                                 "to": (DAY + dt.timedelta(days=2)).isoformat(), "model": "m-a"})
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{
        "date": DAY.isoformat(), "project": alice.project.public_id, "model": "m-a", "key": secret.public_id,
        "key_name": f"test ({secret.redacted})", "requests": "2", "input_tokens": "30", "output_tokens": "12",
        "cost_micros": "3000001", "cost_usd": "3.000001",
    }]
    everything = list(csv.DictReader(io.StringIO(client.get("/console/usage.csv", {
        "org": alice.organization.public_id, "from": DAY.isoformat(), "to": (DAY + dt.timedelta(days=2)).isoformat(),
    }).content.decode())))
    assert sum(int(r["cost_micros"]) for r in everything) == 3_000_339 and len(everything) == 3
    assert {r["cost_usd"] for r in everything} == {"3.000001", "0.000333", "0.000005"}


def test_web_chat_usage_is_labelled_web_chat(client, alice):
    from console import keys as key_format

    new = key_format.generate("secret")
    webchat = ApiKey.objects.create(project=alice.project, kind="webchat", lookup=new.lookup, hash=new.hash,
                                    last4=new.last4)
    record(alice, key=webchat, cost=42)
    login(client, alice)
    html = client.get("/console/usage/").content.decode()
    row = html.split(f'data-key="{webchat.public_id}"')[1].split("</tr>")[0]
    assert "<td>Web Chat</td>" in row


def test_every_role_sees_usage_but_finance_not_the_request_log(client, alice):
    from django.contrib.auth import get_user_model

    from console.models import Role

    finance = get_user_model().objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    client.login(username="fin", password="pw-finfin")
    assert client.get("/console/usage/").status_code == 200
    assert client.get("/console/usage.csv").status_code == 200
    assert client.get(f"/console/projects/{alice.project.public_id}/requests/").status_code == 404


def test_request_log_lists_metadata_filters_and_pages(client, alice, charlie):
    secret, pk, _ = seed(alice, charlie)
    now = timezone.now()
    for i in range(55):
        record(alice, key=secret, model="m-page", cost=1, at=now - dt.timedelta(seconds=i))
    failed = record(alice, key=pk, model="m-b", status=429, error_code="rate_limited", session_id="sess-42",
                    node_id="", at=now + dt.timedelta(seconds=1))
    login(client, alice)
    url = f"/console/projects/{alice.project.public_id}/requests/"
    html = client.get(url).content.decode()
    assert "bodies are not stored" in html
    assert html.count("<tr data-request=") == 50 and "Page 1 of 2" in html
    first = html.split(f'data-request="{failed.request_id}"')[1].split("</tr>")[0]
    assert "429" in first and "rate_limited" in first and "sess-42" in first and "m-b" in first
    page2 = client.get(url, {"page": 2}).content.decode()
    assert page2.count("<tr data-request=") == 60 - 50  # 55 + the 4 seeded in this project + 1 failed

    failed_only = client.get(url, {"status": "failed"}).content.decode()
    assert failed_only.count("<tr data-request=") == 1
    ok_model = client.get(url, {"status": "ok", "model": "m-a"}).content.decode()
    assert ok_model.count("<tr data-request=") == 3
    by_key = client.get(url, {"key": pk.public_id}).content.decode()
    assert by_key.count("<tr data-request=") == 2
    # Filters survive paging.
    assert "status=ok&amp;model=m-page&amp;page=2" in client.get(url, {"status": "ok", "model": "m-page"}).content.decode()
    charlie_key = ApiKey.objects.get(project=charlie.project, kind="secret")
    assert client.get(url, {"key": charlie_key.public_id}).status_code == 404


def test_a_failed_request_has_a_troubleshooting_bundle_without_secrets(client, alice):
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    moment = dt.datetime(2026, 11, 20, 10, 30, 15, tzinfo=dt.UTC)
    failed = record(alice, key=key, status=502, error_code="upstream_unavailable", session_id="sess-1",
                    node_id="node_abc", model="sim-small", at=moment)
    ok = record(alice, key=key, status=200, at=moment)
    # A stream its node cut after the 200 began: failed too.
    cut = record(alice, key=key, status=200, error_code="upstream_unavailable", at=moment - dt.timedelta(seconds=1))
    login(client, alice)
    url = f"/console/projects/{alice.project.public_id}/requests/"
    html = client.get(url).content.decode()
    assert html.count('data-testid="bundle"') == 2 and f"request_id: {cut.request_id}" in html
    assert client.get(url, {"status": "failed"}).content.decode().count("<tr data-request=") == 2
    assert client.get(url, {"status": "ok"}).content.decode().count("<tr data-request=") == 1
    bundle = html.split('data-testid="bundle">')[1].split("</pre>")[0]
    assert bundle.splitlines() == [
        "Troubleshooting bundle",
        f"request_id: {failed.request_id}",
        "session_id: sess-1",
        f"project: {alice.project.public_id}",
        "endpoint: chat.completions",
        "model: sim-small",
        "node: node_abc",
        "time: 2026-11-20T10:30:15Z",
        "window: 2026-11-20T10:29:15Z .. 2026-11-20T10:31:15Z",
        "status: 502",
        "error_code: upstream_unavailable",
    ]
    assert ok.request_id not in bundle and "sk_live" not in bundle and key.public_id not in bundle
    assert 'data-copy="bundle-' in html and "<summary>Troubleshooting bundle</summary>" in html


def test_csv_cells_never_start_a_spreadsheet_formula(client, alice):
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    key.name = '=HYPERLINK("http://evil.example","x")'
    key.save(update_fields=["name"])
    record(alice, key=key, model="@SUM(A1)", cost=1)
    login(client, alice)
    rows = list(csv.DictReader(io.StringIO(client.get("/console/usage.csv").content.decode())))
    assert rows[0]["key_name"].startswith("'=HYPERLINK") and rows[0]["model"] == "'@SUM(A1)"
    assert rows[0]["cost_micros"] == "1" and rows[0]["cost_usd"] == "0.000001"


def test_odd_dates_fall_back_instead_of_failing(client, alice):
    login(client, alice)
    for params in ({"from": "0001-01-01", "to": "0001-01-02"}, {"from": "9999-12-31"}, {"to": "yesterday"},
                   {"from": "2026-01-01", "to": "2020-01-01"}):
        response = client.get("/console/usage/", params)
        assert response.status_code == 200, params
    html = client.get("/console/usage/", {"from": "2024-01-01", "to": "2026-06-30"}).content.decode()
    assert "The range is limited to 366 days." in html and 'value="2025-06-30"' in html
