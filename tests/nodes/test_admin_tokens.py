"""Admins add node tokens and nodes; hashes and credentials never show."""
from __future__ import annotations

import re

import pytest
from django.core.management import call_command


@pytest.fixture
def admin_client(transactional_db, django_user_model):
    from django.test import Client

    client = Client()  # tests/nodes' `client` is the simulator's
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-rootroot")
    client.force_login(user)
    return client


def test_a_token_added_in_the_admin_is_shown_once_and_never_its_hash(admin_client, charlie):
    from console import keys
    from nodes.models import NodeToken

    response = admin_client.post(
        "/admin/nodes/nodetoken/add/", {"organization": charlie.organization.id, "name": "rack"}, follow=True
    )
    assert response.status_code == 200
    token = NodeToken.objects.get()
    plaintext = re.search(r"nt_live_[0-9A-Za-z]+", response.content.decode()).group(0)
    assert keys.matches(plaintext, token.hash) and token.name == "rack"
    page = admin_client.get(f"/admin/nodes/nodetoken/{token.id}/change/").content.decode()
    assert token.hash not in page and plaintext not in page

    admin_client.post("/admin/nodes/nodetoken/", {"action": "revoke", "_selected_action": [token.id]})
    token.refresh_from_db()
    assert token.status == NodeToken.Status.REVOKED


def test_node_admin_pages_render_without_credentials(admin_client, transactional_db):
    from nodes.services import node_credentials_set, node_upsert

    node = node_upsert(name="n", base_url="http://10.0.0.1:8000/v1", models=[{"model": "m"}], hardware="4x L40S")
    node_credentials_set(node=node, credentials="very-secret-credential")
    assert node.gpus == 4
    for url in ("/admin/nodes/node/", "/admin/nodes/node/add/", f"/admin/nodes/node/{node.id}/change/"):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "very-secret-credential" not in response.content.decode()


def test_the_management_command_creates_and_revokes_tokens(charlie, capsys):
    from nodes.models import NodeToken

    call_command("node_token", "create", charlie.organization.public_id, "--name", "cli")
    public_id, plaintext = capsys.readouterr().out.split()[:2]
    token = NodeToken.objects.get(public_id=public_id)
    assert plaintext.startswith("nt_live_") and token.organization == charlie.organization
    call_command("node_token", "revoke", public_id)
    token.refresh_from_db()
    assert token.status == NodeToken.Status.REVOKED
