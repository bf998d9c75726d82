"""Dashboard and project settings: the current organization and its month, settings validated
(origins, resume window, limits within the plan), roles gating edits, the gateway seeing changes."""
from __future__ import annotations

import datetime as dt

from django.utils import timezone

from billing.models import Plan
from billing.plans import account_plan_set
from console import services
from console.models import Project
from tests.conftest import make_tenant
from tests.console.pages import login, record


def settings_post(project, **overrides):
    data = {
        "name": project.name, "allowed_origins": "\n".join(project.allowed_origins), "stream_resume_seconds": "30",
        "rpm_limit": "", "tpm_limit": "", "monthly_spend_cap": "",
    }
    data.update(overrides)
    return data


def test_dashboard_shows_the_current_org_its_projects_month_and_balance(client, alice):
    second = services.project_create(organization=alice.organization, name="Second")
    record(alice, cost=1_250_000)
    record(alice, cost=250_000, project=second)
    record(alice, cost=9_000_000, at=timezone.now() - dt.timedelta(days=40))  # an earlier month: not counted
    login(client, alice)
    page = client.get("/console/").content.decode()
    assert alice.organization.name.replace("'", "&#x27;") in page
    assert 'data-micros="1000000"' in page and "1.00 USD" in page  # the balance
    assert 'data-testid="month-cost">1.50 USD' in page
    row = page.split(f'data-project="{second.public_id}"')[1].split("</tr>")[0]
    assert "<td>1</td>" in row and "0.25 USD" in row
    assert f"/console/projects/{alice.project.public_id}/keys/" in page


def test_org_switch_shows_only_that_org(client, alice, charlie):
    from console.models import Role

    services.membership_add(organization=charlie.organization, user=alice.user, role=Role.DEVELOPER)
    login(client, alice)
    page = client.get(f"/console/?org={charlie.organization.public_id}").content.decode()
    assert charlie.project.public_id in page and alice.project.public_id not in page
    assert "Create project" not in page  # a developer there
    # The choice sticks for the next page.
    assert charlie.project.public_id in client.get("/console/").content.decode()
    # An organization she is not in: 404, never someone else's data.
    outsider = make_tenant("dave")
    assert client.get(f"/console/?org={outsider.organization.public_id}").status_code == 404


def test_owner_creates_and_renames_a_project_and_a_developer_cannot(client, alice, bob):
    login(client, bob)
    assert client.post("/console/projects/new", {"name": "Nope"}).status_code == 404
    client.logout()
    login(client, alice)
    response = client.post("/console/projects/new", {"name": "Mobile app", "org": alice.organization.public_id})
    project = Project.objects.get(name="Mobile app", organization=alice.organization)
    assert response.status_code == 302 and response["Location"] == f"/console/projects/{project.public_id}/"
    response = client.post(f"/console/projects/{project.public_id}/settings", settings_post(project, name="Mobile"))
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.name == "Mobile"


def test_settings_are_saved_and_validated(client, alice):
    login(client, alice)
    url = f"/console/projects/{alice.project.public_id}/settings"
    ok = client.post(url, settings_post(
        alice.project, allowed_origins="https://App.Alice.example\nhttp://localhost:5173 https://app.alice.example",
        idempotency_required="on", stream_resume_seconds="120", rpm_limit="90", tpm_limit="50000",
        monthly_spend_cap="12.50",
    ), follow=True)
    assert "Settings saved" in ok.content.decode()
    project = Project.objects.get(id=alice.project.id)
    assert project.allowed_origins == ["http://localhost:5173", "https://app.alice.example"]
    assert (project.idempotency_required, project.stream_resume_seconds) == (True, 120)
    assert (project.rpm_limit, project.tpm_limit, project.monthly_spend_cap) == (90, 50_000, 12_500_000)

    for field, value, message in [
        ("allowed_origins", "https://app.example.com/path", "is not an origin"),
        ("allowed_origins", "ftp://files.example.com", "is not an origin"),
        ("allowed_origins", "https://example.com:99999", "is not an origin"),
        ("stream_resume_seconds", "601", "less than or equal to 600"),
        ("stream_resume_seconds", "-1", "greater than or equal to 0"),
        ("monthly_spend_cap", "lots", "Enter a cap in dollars"),
        ("rpm_limit", "0", "greater than or equal to 1"),
    ]:
        bad = client.post(url, settings_post(project, **{field: value}))
        assert bad.status_code == 400 and message in bad.content.decode(), (field, value)
    project.refresh_from_db()
    assert project.stream_resume_seconds == 120 and project.monthly_spend_cap == 12_500_000  # unchanged

    # Blank clears the limits and the cap.
    client.post(url, settings_post(project, stream_resume_seconds="120"))
    project.refresh_from_db()
    assert (project.rpm_limit, project.tpm_limit, project.monthly_spend_cap) == (None, None, None)


def test_limits_above_the_plan_are_refused_with_a_clear_message(client, alice):
    plan = Plan.objects.create(code="starter", name="Starter", rpm_limit=60, tpm_limit=40_000)
    account_plan_set(account=alice.organization.billing_account, plan=plan)
    login(client, alice)
    url = f"/console/projects/{alice.project.public_id}/settings"
    page = client.get(f"/console/projects/{alice.project.public_id}/").content.decode()
    assert "Your plan (Starter) allows up to 60" in page
    bad = client.post(url, settings_post(alice.project, rpm_limit="61", tpm_limit="40001"))
    html = bad.content.decode()
    assert bad.status_code == 400
    assert "Your plan (Starter) allows at most 60 requests per minute" in html
    assert "Your plan (Starter) allows at most 40,000 tokens per minute" in html
    assert Project.objects.get(id=alice.project.id).rpm_limit is None
    assert client.post(url, settings_post(alice.project, rpm_limit="60", tpm_limit="40000")).status_code == 302
    assert Project.objects.get(id=alice.project.id).rpm_limit == 60


def test_a_developer_sees_settings_but_cannot_change_them_and_outsiders_get_404(client, alice, bob, charlie):
    login(client, bob)
    page = client.get(f"/console/projects/{alice.project.public_id}/")
    assert page.status_code == 200 and "<fieldset disabled>" in page.content.decode()
    url = f"/console/projects/{alice.project.public_id}/settings"
    assert client.post(url, settings_post(alice.project, name="Hijacked")).status_code == 404
    client.logout()
    login(client, charlie)
    assert client.get(f"/console/projects/{alice.project.public_id}/").status_code == 404
    assert client.post(url, settings_post(alice.project, name="Hijacked")).status_code == 404
    assert Project.objects.get(id=alice.project.id).name == alice.project.name


def test_allowed_origins_reach_the_gateway_within_a_second(client, server, alice):
    import time

    import httpx

    login(client, alice)
    headers = {**alice.auth(alice.publishable_key), "Origin": "https://new.alice.example"}
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    before = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
    assert before.status_code == 403 and before.json()["error"]["code"] == "origin_not_allowed"
    client.post(f"/console/projects/{alice.project.public_id}/settings",
                settings_post(alice.project, allowed_origins="https://new.alice.example"))
    deadline = time.monotonic() + 1.5
    while True:
        after = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
        if after.status_code != 403 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after.json()["error"]["code"] == "model_not_found"  # past the origin check


def test_someone_in_no_organization_gets_a_page_saying_so(client, alice, bob):
    from console.models import Membership

    Membership.objects.filter(user=bob.user).delete()
    login(client, bob)
    response = client.get("/console/")
    assert response.status_code == 200 and "not a member of any organization" in response.content.decode()
    assert client.get(f"/console/?org={alice.organization.public_id}").status_code == 200
    assert alice.project.public_id not in client.get(f"/console/?org={alice.organization.public_id}").content.decode()


def test_every_settings_input_has_a_label_and_its_help_is_described(client, alice):
    import re

    login(client, alice)
    html = client.get(f"/console/projects/{alice.project.public_id}/").content.decode()
    ids = re.findall(r'<(?:input|select|textarea)[^>]* id="([^"]+)"', html)
    assert len(ids) >= 8
    for element_id in ids:
        assert f'for="{element_id}"' in html, element_id
    for described in re.findall(r'aria-describedby="([^"]+)"', html):
        assert f'id="{described}"' in html, described
