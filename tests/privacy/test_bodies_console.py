"""The project's body storage setting (console) and the request log's decrypted bodies:
shown to roles with requests.view, with a note when not kept, expired or shredded."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from console.models import Project, Role
from gateway import vault
from gateway.models import RequestRecord
from tests.console.pages import login, record

pytestmark = pytest.mark.django_db(transaction=True)


def kept(tenant, *, request=b'{"q":"what is the secret?"}', response=b'{"a":"<b>42</b>"}', expires_at=None):
    rec = record(tenant)
    RequestRecord.objects.filter(id=rec.id).update(bodies_kept=True)
    rec.refresh_from_db()
    for kind, body in (("request", request), ("response", response)):
        vault.body_store(project=tenant.project, owner="request", ref=rec.request_id, kind=kind, plaintext=body,
                         expires_at=expires_at)
    return rec


def test_owner_sets_body_storage_and_the_gateway_sees_it(client, alice, bob):
    url = f"/console/projects/{alice.project.public_id}/"
    login(client, alice)
    html = client.get(url).content.decode()
    assert 'id="bodies"' in html and 'value="never"' in html and "checked" in html.split('value="never"')[1][:40]
    response = client.post(f"/console/projects/{alice.project.public_id}/bodies",
                           {"store_bodies": "days", "body_retention_days": "7"})
    assert response.status_code == 302
    alice.project.refresh_from_db()
    assert (alice.project.store_bodies, alice.project.body_retention_days) == ("days", 7)
    bad = client.post(f"/console/projects/{alice.project.public_id}/bodies", {"store_bodies": "always", "body_retention_days": "0"})
    assert bad.status_code == 400 and "Select a valid choice" in bad.content.decode()
    # a developer sees it but cannot change it
    client.logout()
    login(client, bob)
    assert client.post(f"/console/projects/{alice.project.public_id}/bodies",
                       {"store_bodies": "never", "body_retention_days": "7"}).status_code == 404
    alice.project.refresh_from_db()
    assert alice.project.store_bodies == "days"


def test_request_log_shows_bodies_decrypted_with_notes(client, alice, bob, charlie, django_assert_max_num_queries):
    Project.objects.filter(id=alice.project.id).update(store_bodies="forever")
    shown = kept(alice)
    old = kept(alice, expires_at=timezone.now() - dt.timedelta(minutes=1))
    plain = record(alice)
    login(client, bob)  # a developer: requests.view
    url = f"/console/projects/{alice.project.public_id}/requests/"
    html = client.get(url).content.decode()
    assert "Bodies are kept encrypted until" in html
    row = html.split(f'data-request="{shown.request_id}"')[1].split('<tr data-request=')[0]
    assert "what is the secret?" in row and "&lt;b&gt;42&lt;/b&gt;" in row  # escaped, never raw HTML
    expired = html.split(f'data-request="{old.request_id}"')[1].split('<tr data-request=')[0]
    assert 'data-reason="expired"' in expired and "what is the secret" not in expired
    unkept = html.split(f'data-request="{plain.request_id}"')[1].split('<tr data-request=')[0]
    assert "bodies not kept" in unkept and "<details class=\"bodies\"" not in unkept
    # one query for the blobs and one per key version, not one per row
    with django_assert_max_num_queries(14):
        client.get(url)

    vault.project_key_destroy(alice.project)
    html = client.get(url).content.decode()
    row = html.split(f'data-request="{shown.request_id}"')[1].split('<tr data-request=')[0]
    assert 'data-reason="shredded"' in row and "destroyed" in row and "what is the secret" not in row

    # finance has no requests.view: no log, no bodies; another tenant neither
    from django.contrib.auth import get_user_model

    from console import services

    finance = get_user_model().objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    client.logout()
    client.login(username="fin", password="pw-finfin")
    assert client.get(url).status_code == 404
    client.logout()
    login(client, charlie)
    assert client.get(url).status_code == 404
