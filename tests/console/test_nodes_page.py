"""The console's network view (/console/nodes/): the nodes GET /v1/nodes shows (regions,
attestation, load, health, models) without names or addresses, whether the organization's
projects may use each, and for node operators a way to their own nodes."""
from __future__ import annotations

import httpx
import pytest
from django.urls import reverse

from console.models import Role
from tests.conftest import SIM_MODEL
from tests.console.test_views import login


@pytest.fixture
def plain_node(charlie, sim):
    """A non-confidential node charlie's organization operates, in eu-2, serving the priced
    simulator model and an unpriced one."""
    from nodes.services import node_register

    return node_register(operator=charlie.organization, name="charlies-plain-box", base_url=f"{sim.url}/v1",
                         region="eu-2", models=[{"model": SIM_MODEL}, {"model": "unpriced-model"}])


def _none_attested(node):
    from nodes.models import Node

    Node.objects.filter(id=node.id).update(attestation="none", attestation_expires_at=None)


def test_a_developer_sees_the_network_by_region(client, bob, charlie, sim_node, plain_node):
    _none_attested(plain_node)
    login(client, bob)
    assert reverse("console:nodes") == "/console/nodes/"
    page = client.get("/console/nodes/").content.decode()
    # both regions, each node by public id only
    assert 'data-region="test-1"' in page and 'data-region="eu-2"' in page
    assert f'data-node="{sim_node.public_id}"' in page and f'data-node="{plain_node.public_id}"' in page
    assert "simulator" not in page  # node names stay private (sim_node is called "simulator")
    assert "charlies-plain-box" not in page and sim_node.base_url not in page and charlie.organization.name not in page
    assert f"<code>{SIM_MODEL}</code>" in page and "unpriced-model" not in page  # the catalog lists priced models only
    row = page.split(f'data-node="{sim_node.public_id}"')[1].split("</tr>")[0]
    assert "status-ok" in row and ">verified<" in row and "yes" in row
    assert "every project" in row
    plain = page.split(f'data-node="{plain_node.public_id}"')[1].split("</tr>")[0]
    assert "none" in plain and "no project allows non-confidential nodes" in plain
    assert 'data-testid="network-summary"' in page and "2</strong> of 2 nodes healthy" in page
    assert "1 with a verified attestation" in page
    assert "You run no nodes" in page  # bob operates nothing


def test_a_project_that_allows_non_confidential_nodes_may_use_them(client, alice, plain_node, sim_node):
    from console import services

    _none_attested(plain_node)
    services.project_update(project=alice.project, allow_non_confidential=True)
    login(client, alice)
    page = client.get("/console/nodes/").content.decode()
    plain = page.split(f'data-node="{plain_node.public_id}"')[1].split("</tr>")[0]
    assert "yes" in plain and alice.project.name in plain


def test_health_and_load_as_the_nodes_report_them(client, alice, sim_node, settings):
    from nodes.models import Node

    Node.objects.filter(id=sim_node.id).update(healthy=False, load=0.75)
    login(client, alice)
    page = client.get("/console/nodes/").content.decode()
    row = page.split(f'data-node="{sim_node.public_id}"')[1].split("</tr>")[0]
    assert "unhealthy" in row and 'value="0.75"' in row
    assert "0</strong> of 1 node healthy" in page


def test_operators_get_a_link_to_their_nodes(client, charlie, plain_node):
    login(client, charlie)
    page = client.get("/console/nodes/").content.decode()
    link = reverse("console:org_nodes", args=[charlie.organization.public_id])
    assert f'href="{link}"' in page and "1 of 1 active node healthy" in page
    assert client.get(link).status_code == 200  # the operator page with tokens, health and jobs


def test_finance_members_and_outsiders_do_not_see_it(client, alice, django_user_model):
    from console import services

    finance = django_user_model.objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    client.force_login(finance)
    assert client.get("/console/nodes/").status_code == 404
    client.logout()
    response = client.get("/console/nodes/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_it_lists_what_get_v1_nodes_lists(client, server, alice, sim_node, plain_node):
    """The page is a superset of the API's answer for the same organization (the API leaves out
    unhealthy nodes and the ones the project may not use; the page marks them)."""
    _none_attested(plain_node)
    api = httpx.get(f"{server.api}/nodes", headers=alice.auth()).json()["data"]
    assert [n["id"] for n in api] == [sim_node.public_id]
    login(client, alice)
    page = client.get("/console/nodes/").content.decode()
    for node in api:
        row = page.split(f'data-node="{node["id"]}"')[1].split("</tr>")[0]
        assert node["attestation"] in row and "yes" in row
        for model in node["models"]:
            assert f"<code>{model}</code>" in row


def test_the_operator_page_shows_tokens_and_health_history(client, charlie, alice, plain_node, settings):
    from nodes.models import Node
    from nodes.services import node_token_create, node_token_revoke
    from nodes.tasks import check_node_health

    token, plaintext = node_token_create(organization=charlie.organization, name="rack token")
    old, _ = node_token_create(organization=charlie.organization, name="old token")
    node_token_revoke(token=old)
    Node.objects.filter(id=plain_node.id).update(base_url="http://127.0.0.1:9/v1")  # probes now fail
    for _ in range(settings.NODE_UNHEALTHY_AFTER):
        check_node_health()
    login(client, charlie)
    page = client.get(reverse("console:org_nodes", args=[charlie.organization.public_id])).content.decode()
    tokens = page.split('id="node-tokens"')[1].split("</section>")[0]
    assert f"nt_live_…{token.last4}" in tokens and "rack token" in tokens and plaintext not in page
    assert "old token" in tokens and "revoked" in tokens
    history = page.split('id="health-history"')[1].split("</section>")[0]
    assert f'data-health-event="{plain_node.public_id}"' in history and "unhealthy" in history
    assert f"{settings.NODE_UNHEALTHY_AFTER} probes failed in a row" in history
    # another organization's operators see none of it
    login(client, alice)
    assert client.get(reverse("console:org_nodes", args=[charlie.organization.public_id])).status_code == 404
