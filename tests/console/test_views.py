"""Console pages: login required, tenant-scoped (outsiders get 404), keys shown once."""
from console.models import ApiKey


def login(client, tenant):
    assert client.login(username=tenant.user.username, password="pw-" + tenant.user.username * 2)


def test_console_requires_login(client, alice):
    response = client.get("/console/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_dashboard_shows_own_organization_and_balance(client, alice):
    login(client, alice)
    page = client.get("/console/").content.decode()
    assert alice.project.public_id in page and "1000000" in page


def test_outsider_gets_404_for_another_tenants_project_and_keys(client, alice, charlie):
    login(client, charlie)
    key = ApiKey.objects.get(project=alice.project, kind="secret")
    assert client.get(f"/console/projects/{alice.project.public_id}/").status_code == 404
    assert client.post(f"/console/projects/{alice.project.public_id}/keys/{key.public_id}/revoke").status_code == 404
    # Even naming his own project, he cannot reach alice's key through it.
    assert client.post(f"/console/projects/{charlie.project.public_id}/keys/{key.public_id}/revoke").status_code == 404
    key.refresh_from_db()
    assert key.status == "active"


def test_member_creates_a_key_that_is_shown_exactly_once(client, bob):
    login(client, bob)
    url = f"/console/projects/{bob.project.public_id}/"
    response = client.post(url + "keys/new", {"name": "from console", "kind": "secret"}, follow=True)
    created = ApiKey.objects.get(name="from console")
    shown = response.content.decode()
    plaintext = shown.split('<code id="new-key">')[1].split("</code>")[0]
    assert plaintext.startswith("sk_live_") and plaintext.endswith(created.last4)
    assert plaintext not in client.get(url).content.decode()


def test_revoke_from_console(client, alice):
    login(client, alice)
    key = ApiKey.objects.get(project=alice.project, kind="publishable")
    client.post(f"/console/projects/{alice.project.public_id}/keys/{key.public_id}/revoke")
    key.refresh_from_db()
    assert key.status == "revoked" and key.revoked_at is not None


def test_owner_sets_node_routing_and_a_developer_cannot(client, alice, bob):
    from console.models import Project

    url = f"/console/projects/{alice.project.public_id}/routing"
    login(client, bob)  # a developer
    assert client.post(url, {"allow_non_confidential": "on"}).status_code == 404
    client.logout()
    login(client, alice)
    page = client.post(url, {"allow_non_confidential": "on", "region_preference": " EU-West "}, follow=True)
    html = page.content.decode()
    assert "Routing settings saved" in html and html.count('name="allow_non_confidential"') == 1
    assert "<form" not in html.split("<title>")[1].split("</title>")[0]  # the form lives in the page, not its title
    project = Project.objects.get(id=alice.project.id)
    assert project.allow_non_confidential and project.region_preference == "eu-west"
    refused = client.post(url, {"region_preference": "eu west!"}, follow=True).content.decode()
    assert "lowercase letters" in refused and Project.objects.get(id=project.id).region_preference == "eu-west"
    client.post(url, {})  # unchecked box: opt out again, no preference
    project.refresh_from_db()
    assert not project.allow_non_confidential and project.region_preference == ""
