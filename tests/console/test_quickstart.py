"""The quickstart page: snippets with the caller's base URL and a model their organization may
use, a placeholder key with a way to create one, copy buttons; and the Python snippet, taken
from the page a live server rendered, run as it is shown (key substituted) against that server."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys

import httpx
import openai
from allauth.account.models import EmailAddress
from django.urls import reverse

from console.models import Role
from console.quickstart import KEY_PLACEHOLDER
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL
from tests.console.test_views import login


def snippet(page: str, name: str) -> str:
    match = re.search(rf'<code id="snippet-{name}"[^>]*>(.*?)</code>', page, re.DOTALL)
    assert match, f"no {name} snippet"
    return html.unescape(match.group(1))


def test_the_page_uses_the_request_host_and_a_usable_model(client, alice, sim_node, settings):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "api.example.test"]
    login(client, alice)
    assert reverse("console:quickstart") == "/console/quickstart/"
    page = client.get("/console/quickstart/", HTTP_HOST="api.example.test").content.decode()
    for name in ("curl", "python", "javascript", "anthropic"):
        code = snippet(page, name)
        assert KEY_PLACEHOLDER in code and SIM_MODEL in code, name
        assert f'data-copy="snippet-{name}"' in page
    assert "curl http://api.example.test/v1/chat/completions" in snippet(page, "curl")
    assert 'base_url="http://api.example.test/v1"' in snippet(page, "python")
    assert 'fetch("http://api.example.test/v1/chat/completions"' in snippet(page, "javascript")
    assert 'Anthropic(base_url="http://api.example.test"' in snippet(page, "anthropic")  # the SDK adds /v1
    assert f'href="{reverse("console:keys", args=[alice.project.public_id])}"' in page  # create a key
    assert "js/quickstart.js" in page


def test_a_configured_public_base_url_wins(client, alice, sim_node, settings):
    settings.PUBLIC_BASE_URL, settings.PUBLIC_BASE_URL_CONFIGURED = "https://inference.example.com/", True
    login(client, alice)
    page = client.get("/console/quickstart/").content.decode()
    assert 'base_url="https://inference.example.com/v1"' in snippet(page, "python")


def test_a_model_outside_the_plan_or_unserved_is_not_offered(client, alice, sim_node):
    from billing.models import BillingAccount, Plan

    login(client, alice)
    page = client.get("/console/quickstart/?model=not-a-model").content.decode()
    assert f'model="{SIM_MODEL}"' in snippet(page, "python")
    plan = Plan.objects.create(code="narrow", name="Narrow", allowed_models=["other-model"])
    BillingAccount.objects.filter(organization=alice.organization).update(plan=plan)
    page = client.get("/console/quickstart/").content.decode()
    assert 'model="MODEL_NAME"' in snippet(page, "python") and "No model is available" in page


def test_finance_members_do_not_see_it(client, alice, django_user_model):
    from console import services

    finance = django_user_model.objects.create_user(username="fin", email="fin@example.com", password="pw-finfin")
    services.membership_add(organization=alice.organization, user=finance, role=Role.FINANCE)
    client.force_login(finance)
    assert client.get("/console/quickstart/").status_code == 404


def _signed_in(server, tenant) -> httpx.Client:
    EmailAddress.objects.update_or_create(user=tenant.user, email=tenant.user.email,
                                          defaults={"verified": True, "primary": True})
    browser = httpx.Client(base_url=server.url, follow_redirects=True, timeout=30)
    form = browser.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    signed = browser.post("/accounts/login/", data={"login": tenant.user.email, "password": "pw-" + tenant.user.username * 2,
                                                    "csrfmiddlewaretoken": token}, headers={"Referer": f"{server.url}/accounts/login/"})
    assert "/accounts/login/" not in str(signed.url), signed.text[:500]
    return browser


def test_the_snippets_from_the_live_page_work(server, alice, sim_node, tmp_path):
    """Every snippet as the live server renders it, the key substituted, run as a user would:
    Python (openai), Python (anthropic), JavaScript under Node, curl; each gets the same answer."""
    browser = _signed_in(server, alice)
    try:
        page = browser.get("/console/quickstart/")
    finally:
        browser.close()
    assert page.status_code == 200
    # The same request made here answers the same (the simulator's answer is deterministic).
    direct = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0).chat.completions.create(
        model=SIM_MODEL, messages=[{"role": "user", "content": "Say hello in five words."}]
    )
    expected = direct.choices[0].message.content.strip()
    assert expected
    before = RequestRecord.objects.filter(api_key__project=alice.project).count()

    def run(name: str, filename: str, command: list[str]) -> str:
        code = snippet(page.text, name)
        assert server.url in code, name
        script = tmp_path / filename
        script.write_text(code.replace(KEY_PLACEHOLDER, alice.secret_key))
        done = subprocess.run([*command, str(script)], check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        return done.stdout.strip()

    assert f'base_url="{server.url}/v1"' in snippet(page.text, "python")
    assert run("python", "quickstart.py", [sys.executable]) == expected
    assert run("anthropic", "quickstart_anthropic.py", [sys.executable]) == expected
    ran = 2
    if shutil.which("node"):
        assert run("javascript", "quickstart.mjs", [shutil.which("node")]) == expected
        ran += 1
    if shutil.which("curl"):
        answer = json.loads(run("curl", "quickstart.sh", ["bash"]))
        assert answer["choices"][0]["message"]["content"].strip() == expected
        ran += 1
    records = RequestRecord.objects.filter(api_key__project=alice.project).order_by("id")
    assert records.count() == before + ran and {r.model for r in records} == {SIM_MODEL}
