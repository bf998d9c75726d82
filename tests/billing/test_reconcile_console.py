"""The finance console through real HTTP requests (Django's test client): who sees what,
runs and discrepancies (CSV, re-run, heal, close with a note; POST with CSRF), and the
revenue/usage report per day and per organization.

Tenancy: platform finance is staff with the billing.view_reconciliationrun permission
(acting also needs billing.change_discrepancy); an organization's finance members and
owners see only their organization's report; other members get 403, outsiders 404.
"""
from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone

from billing.models import Discrepancy, ReconciliationRun, Transfer
from billing.pricing import Usage
from billing.reconcile import reconcile_run
from billing.services import wallet_credit
from console import services
from console.models import Role
from tests.billing.test_ledger import price  # noqa: F401 - fixture
from tests.billing.test_reconcile import request as paid_request

PASSWORD = "pw-finance-staff"


@pytest.fixture(autouse=True)
def _no_stripe(settings):
    settings.STRIPE_SECRET_KEY = ""


def today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def staff(django_user_model, name: str, *perms: str):
    user = django_user_model.objects.create_user(username=name, email=f"{name}@platform.example", password=PASSWORD,
                                                 is_staff=True)
    if perms:
        group, _ = Group.objects.get_or_create(name=f"finance-{'-'.join(perms)}")
        for perm in perms:
            app, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
        user.groups.add(group)
    return user


@pytest.fixture
def finance_staff(transactional_db, django_user_model):
    return staff(django_user_model, "fin", "billing.view_reconciliationrun", "billing.change_discrepancy")


@pytest.fixture
def auditor(transactional_db, django_user_model):
    """Staff who may read runs but not act on them."""
    return staff(django_user_model, "auditor", "billing.view_reconciliationrun")


def as_user(user, password=PASSWORD, *, csrf=False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    assert client.login(username=user.username, password=password)
    return client


def as_tenant(tenant) -> Client:
    return as_user(tenant.user, "pw-" + tenant.user.username * 2)


@pytest.fixture
def lost_record_run(alice, price):  # noqa: F811
    """A run with one open discrepancy: a settlement whose request record never landed."""
    paid_request(alice, price, request_id="req-lost", usage=Usage(100, 40), record=False)
    return reconcile_run(day=today())


def platform_urls(run: ReconciliationRun) -> list[str]:
    return ["/finance/report", "/finance/runs/", f"/finance/runs/{run.id}/", f"/finance/runs/{run.id}/discrepancies.csv"]


def test_signed_out_users_are_sent_to_login(client, lost_record_run, alice):
    for url in [*platform_urls(lost_record_run), "/finance/", f"/finance/orgs/{alice.organization.public_id}/"]:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url


def test_tenants_and_plain_staff_cannot_reach_platform_pages(lost_record_run, alice, bob, charlie, django_user_model):
    plain_staff = staff(django_user_model, "ops")  # staff without the finance permission
    for client in (as_tenant(alice), as_tenant(bob), as_tenant(charlie), as_user(plain_staff)):
        for url in platform_urls(lost_record_run):
            assert client.get(url).status_code == 403, url
        assert client.post(f"/finance/runs/{lost_record_run.id}/rerun").status_code == 403
        assert client.post("/finance/runs/", {"day": today().isoformat()}).status_code == 403
    d = lost_record_run.discrepancies.get()
    assert as_tenant(alice).post(f"/finance/discrepancies/{d.id}/close", {"note": "mine"}).status_code == 403
    d.refresh_from_db()
    assert d.status == "open" and ReconciliationRun.objects.count() == 1


def test_organization_finance_sees_only_its_own_figures(alice, bob, charlie, price, django_user_model):  # noqa: F811
    wallet_credit(wallet=alice.wallet, amount=25_000_000, kind=Transfer.Kind.TOPUP, reference="cs:test-1")
    wallet_credit(wallet=charlie.wallet, amount=7_000_000, kind=Transfer.Kind.TOPUP, reference="cs:test-2")
    paid_request(alice, price, request_id="req-1", usage=Usage(100, 40))
    accountant = django_user_model.objects.create_user(username="acc", email="acc@example.com", password="pw-acc")
    services.membership_add(organization=alice.organization, user=accountant, role=Role.FINANCE)
    url = f"/finance/orgs/{alice.organization.public_id}/"

    for client in (as_tenant(alice), as_user(accountant, "pw-acc")):
        home = client.get("/finance/")
        assert home.status_code == 200 and url in home.content.decode() and "Reconciliation runs" not in home.content.decode()
        page = client.get(url)
        assert page.status_code == 200
        html = page.content.decode()
        assert 'data-figure="revenue">25.000000<' in html and 'data-figure="usage">0.000180<' in html
        assert charlie.organization.public_id not in html and "7.000000" not in html
    # A developer of the organization: 403; an outsider naming it: 404.
    assert as_tenant(bob).get(url).status_code == 403
    assert as_tenant(bob).get("/finance/").status_code == 403
    assert as_tenant(charlie).get(url).status_code == 404


def test_the_platform_report_has_every_organization_per_day_and_as_csv(finance_staff, alice, charlie, price):  # noqa: F811
    wallet_credit(wallet=alice.wallet, amount=25_000_000, kind=Transfer.Kind.TOPUP, reference="cs:test-1")
    wallet_credit(wallet=charlie.wallet, amount=7_000_000, kind=Transfer.Kind.TOPUP, reference="cs:test-2")
    paid_request(alice, price, request_id="req-1", usage=Usage(100, 40))
    paid_request(alice, price, request_id="req-2", usage=Usage(10, 10))
    run_async_reserve_pending(alice, price)
    client = as_user(finance_staff)
    page = client.get("/finance/report")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-figure="revenue">32.000000<' in html and 'data-figure="usage">0.000210<' in html
    assert 'data-figure="pending">0.000900<' in html
    assert f'data-org="{alice.organization.public_id}"' in html and f'data-org="{charlie.organization.public_id}"' in html
    assert html.index(alice.organization.public_id) < html.index(charlie.organization.public_id)  # by revenue
    assert 'data-kind="topup"' in html and 'data-kind="grant"' in html  # the seed credits are grants
    assert 'id="finance-chart-data"' in html and "vendor/chartjs/chart.umd.min.js" in html

    exported = client.get("/finance/report", {"from": today().isoformat(), "to": today().isoformat(), "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert exported["Content-Type"].startswith("text/csv") and len(rows) == 1
    assert (rows[0]["day"], rows[0]["topups"], rows[0]["usage"], rows[0]["requests"]) == (
        today().isoformat(), "32000000", "210", "2")


def run_async_reserve_pending(tenant, at):
    from tests.billing.test_ledger import reserve
    from tests.conftest import run_async

    run_async(reserve(tenant, at, 900, request_id="req-in-flight"))


def test_a_bad_report_range_is_a_clear_400(finance_staff):
    client = as_user(finance_staff)
    for params, message in (({"from": "2025-02-30"}, "YYYY-MM-DD"), ({"from": "2025-03-02", "to": "2025-03-01"}, "ends before"),
                            ({"from": "2020-01-01", "to": "2025-01-01"}, "at most 366 days")):
        response = client.get("/finance/report", params)
        assert response.status_code == 400 and message in response.content.decode()


def test_finance_staff_read_runs_discrepancies_and_their_csv(finance_staff, lost_record_run):
    client = as_user(finance_staff)
    listing = client.get("/finance/runs/").content.decode()
    assert f'data-run="{lost_record_run.id}"' in listing and "discrepancies" in listing
    d = lost_record_run.discrepancies.get()
    detail = client.get(f"/finance/runs/{lost_record_run.id}/").content.decode()
    assert f'data-discrepancy="{d.id}" data-kind="transfer_without_request" data-status="open"' in detail
    assert "0.000180 USD" in detail and f"transfer={d.references['transfer']}" in detail
    exported = client.get(f"/finance/runs/{lost_record_run.id}/discrepancies.csv")
    assert exported["Content-Type"].startswith("text/csv")
    assert f"reconciliation-{today()}-run-{lost_record_run.id}.csv" in exported["Content-Disposition"]
    (row,) = csv.DictReader(io.StringIO(exported.content.decode()))
    assert (row["kind"], row["amount_micros"], row["status"]) == ("transfer_without_request", "180", "open")
    assert f'"transfer":{d.references["transfer"]}' in row["references"]


def test_csv_cells_cannot_become_spreadsheet_formulas(finance_staff, lost_record_run):
    d = lost_record_run.discrepancies.get()
    as_user(finance_staff).post(f"/finance/discrepancies/{d.id}/close", {"note": "=HYPERLINK(\"http://x\")"})
    (row,) = csv.DictReader(io.StringIO(as_user(finance_staff).get(
        f"/finance/runs/{lost_record_run.id}/discrepancies.csv").content.decode()))
    assert row["note"] == "'=HYPERLINK(\"http://x\")"


def test_closing_needs_a_note_and_then_the_run_is_ok(finance_staff, lost_record_run):
    client = as_user(finance_staff)
    d = lost_record_run.discrepancies.get()
    refused = client.post(f"/finance/discrepancies/{d.id}/close", {"note": "  "}, follow=True)
    assert "Not closed: closing a discrepancy needs a note" in refused.content.decode()
    d.refresh_from_db()
    assert d.status == "open"
    client.post(f"/finance/discrepancies/{d.id}/close", {"note": "record lost in incident 42"})
    d.refresh_from_db()
    lost_record_run.refresh_from_db()
    assert (d.status, d.note, d.resolved_by, lost_record_run.status) == (
        "closed", "record lost in incident 42", finance_staff, "ok")


def test_rerun_and_new_run_from_the_console(finance_staff, lost_record_run):
    client = as_user(finance_staff)
    response = client.post(f"/finance/runs/{lost_record_run.id}/rerun")
    rerun = ReconciliationRun.objects.get(rerun_of=lost_record_run)
    assert response.status_code == 302 and response["Location"] == f"/finance/runs/{rerun.id}/"
    assert rerun.created_by == finance_staff and rerun.discrepancies.get().kind == "transfer_without_request"
    made = client.post("/finance/runs/", {"day": (today() - dt.timedelta(days=1)).isoformat()})
    run = ReconciliationRun.objects.get(day=today() - dt.timedelta(days=1))
    assert made["Location"] == f"/finance/runs/{run.id}/" and run.status == "ok"
    refused = client.post("/finance/runs/", {"day": "tomorrow"}, follow=True)
    assert "Not run:" in refused.content.decode() and ReconciliationRun.objects.count() == 3
    # Heal has nothing to do here (the open discrepancy is not a missing credit) and says so.
    healed = client.post(f"/finance/runs/{rerun.id}/heal", follow=True).content.decode()
    assert "Nothing to heal" in healed and Discrepancy.objects.filter(status="open").count() == 2


def test_actions_need_the_act_permission_and_a_csrf_token(auditor, finance_staff, lost_record_run):
    reader = as_user(auditor)
    page = reader.get(f"/finance/runs/{lost_record_run.id}/").content.decode()
    assert "Re-run this day" not in page and 'name="note"' not in page
    assert reader.post(f"/finance/runs/{lost_record_run.id}/rerun").status_code == 403
    strict = as_user(finance_staff, csrf=True)
    assert strict.post(f"/finance/runs/{lost_record_run.id}/rerun").status_code == 403  # no CSRF token
    d = lost_record_run.discrepancies.get()
    assert strict.post(f"/finance/discrepancies/{d.id}/close", {"note": "x"}).status_code == 403
    d.refresh_from_db()
    assert d.status == "open" and ReconciliationRun.objects.count() == 1
    # With the page's token it goes through.
    page = strict.get(f"/finance/runs/{lost_record_run.id}/").content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    assert strict.post(f"/finance/runs/{lost_record_run.id}/rerun", {"csrfmiddlewaretoken": token}).status_code == 302
    assert ReconciliationRun.objects.count() == 2


def test_unknown_runs_and_discrepancies_are_404_for_finance_staff(finance_staff):
    client = as_user(finance_staff)
    assert client.get("/finance/runs/999999/").status_code == 404
    assert client.post("/finance/discrepancies/999999/close", {"note": "x"}).status_code == 404


def test_the_money_filter_is_exact():
    from console.templatetags.finance import micros

    assert [micros(v) for v in (0, 5, -5, 1_234_567, 12_345_678_901_234, None)] == [
        "0.000000", "0.000005", "-0.000005", "1.234567", "12,345,678.901234", ""]
