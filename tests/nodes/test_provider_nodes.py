"""Provider nodes (hosted APIs) always carry attestation "none": services, registration, admin, database."""
from __future__ import annotations

import datetime as dt

import httpx
import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from tests.conftest import ANTHROPIC_KEY

MODELS = [{"model": "claude-sim", "upstream_model": "sim-small"}]


@pytest.fixture
def operator_token(charlie):
    from nodes.services import node_token_create

    return node_token_create(organization=charlie.organization)[1]


def register(server, token, **fields) -> httpx.Response:
    body = {"name": "anthropic", "base_url": "https://api.anthropic.example", "adapter": "provider-anthropic",
            "models": MODELS, **fields}
    return httpx.post(f"{server.api}/nodes/register", headers={"Authorization": f"Bearer {token}"}, json=body)


def test_a_provider_node_cannot_be_upserted_as_attested(transactional_db):
    from nodes.models import Node
    from nodes.services import NodeConfigError, node_upsert

    for claimed in (Node.Attestation.VERIFIED, Node.Attestation.UNVERIFIED):
        with pytest.raises(NodeConfigError) as refused:
            node_upsert(name="p", base_url="https://api.openai.example/v1", adapter="provider-openai", models=MODELS,
                        attestation=claimed)
        assert refused.value.param == "attestation"
    assert not Node.objects.exists()


def mark_verified(public_id: str) -> None:
    """What a passed attestation writes (nodes.attestation.services), without a node to challenge:
    these tests are about which rows the database and the services accept."""
    from nodes.models import Node

    Node.objects.filter(public_id=public_id).update(
        attestation=Node.Attestation.VERIFIED, attestation_expires_at=timezone.now() + dt.timedelta(hours=1)
    )


def test_the_database_refuses_to_attest_a_provider_node(transactional_db):
    from nodes.models import Node
    from nodes.services import node_upsert

    node = node_upsert(name="p", base_url="https://api.openai.example/v1", adapter="provider-compatible", models=MODELS)
    for change in ({"attestation": "verified", "attestation_expires_at": timezone.now() + dt.timedelta(days=1)},
                   {"attestation": "unverified"}, {"attestation_expires_at": timezone.now()}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Node.objects.filter(id=node.id).update(**change)
    with pytest.raises(IntegrityError), transaction.atomic():
        mark_verified(node.public_id)  # what an attestation step would write

    plain = node_upsert(name="vllm", base_url="http://10.0.0.5:8000/v1", models=MODELS)
    mark_verified(plain.public_id)  # any other kind can be attested
    assert Node.objects.get(id=plain.id).attestation == "verified"
    # Turned into a provider, a node loses its attestation (and its expiry) in the same write.
    node_upsert(public_id=plain.public_id, name="vllm", base_url="https://api.anthropic.example",
                adapter="provider-anthropic", models=MODELS)
    plain.refresh_from_db()
    assert (plain.attestation, plain.attestation_expires_at) == ("none", None)


def test_an_operator_registers_a_provider_only_as_non_confidential_and_with_a_key(server, operator_token):
    from nodes.models import Node

    keyless = register(server, operator_token)
    assert keyless.status_code == 400 and keyless.json()["error"]["param"] == "credentials"
    claims = register(server, operator_token, credentials=ANTHROPIC_KEY, attestation="verified")
    assert claims.status_code == 400  # the registration body has no attestation field at all

    node = register(server, operator_token, credentials=ANTHROPIC_KEY)
    assert node.status_code == 200, node.text
    assert (node.json()["attestation"], node.json()["has_credentials"]) == ("none", True)
    assert ANTHROPIC_KEY not in node.text
    again = register(server, operator_token)  # re-registering keeps the stored key
    assert again.status_code == 200 and again.json()["id"] == node.json()["id"]

    plain = register(server, operator_token, name="rack", adapter="openai", base_url="http://10.0.0.9:8000/v1")
    assert plain.json()["attestation"] == "unverified"
    mark_verified(plain.json()["id"])
    switched = register(server, operator_token, name="rack", credentials="sk-other")  # now a provider
    assert switched.json()["attestation"] == "none"
    back = register(server, operator_token, name="rack", adapter="openai", base_url="http://10.0.0.9:8000/v1")
    assert back.json()["attestation"] == "unverified"  # a provider turned self-hosted must prove itself first
    assert Node.objects.get(public_id=plain.json()["id"]).attestation_expires_at is None


@pytest.fixture
def admin_client(transactional_db, django_user_model):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-rootroot"))
    return client


def admin_form(**fields) -> dict:
    return {
        "name": "hosted", "base_url": "https://api.anthropic.example", "adapter": "provider-anthropic",
        "region": "us", "hardware": "", "gpus": 0, "status": "active", "attestation": "none",
        "new_credentials": "", "models-TOTAL_FORMS": 1, "models-INITIAL_FORMS": 0,
        "members-TOTAL_FORMS": 0, "members-INITIAL_FORMS": 0,
        "models-0-model": "claude-sim", "models-0-upstream_model": "sim-small", "models-0-context_window": 8192,
        "models-0-max_output_tokens": 256, "models-0-input_modalities": '["text"]', **fields,
    }


def test_the_admin_refuses_an_attested_or_keyless_provider(admin_client):
    from nodes.models import Node
    from nodes.services import node_credentials

    claimed = admin_client.post("/admin/nodes/node/add/", admin_form(attestation="verified", new_credentials="sk-1"))
    assert claimed.status_code == 200 and "cannot be attested" in claimed.content.decode()
    keyless = admin_client.post("/admin/nodes/node/add/", admin_form())
    assert keyless.status_code == 200 and "needs credentials" in keyless.content.decode()
    assert not Node.objects.exists()

    added = admin_client.post("/admin/nodes/node/add/", admin_form(new_credentials=ANTHROPIC_KEY))
    assert added.status_code == 302
    node = Node.objects.get()
    assert (node.adapter, node.attestation) == ("provider-anthropic", "none")
    assert node_credentials(node=node) == ANTHROPIC_KEY
    page = admin_client.get(f"/admin/nodes/node/{node.id}/change/").content.decode()
    assert ANTHROPIC_KEY not in page
