"""Plan limits in the gateway: an organization's plan caps every project's requests and
tokens per minute (the lower of the project's and the plan's applies), and a plan with a
model list refuses every other model with 403 ``model_forbidden`` on every endpoint that
takes a model; /v1/models lists only the plan's models. An organization without a plan
has none of this. The plan travels in the cached key record (no extra query per request)
and a change reaches the gateway through the same invalidation as a key's.
"""
from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from billing.models import Plan
from billing.plans import account_plan_set
from billing.services import price_publish
from console import services
from nodes.services import node_upsert
from tests.conftest import SIM_MODEL, SIM_PRICE, cache_settle

OTHER_MODEL = "sim-large"
CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def two_models(sim_node, sim):
    """The simulator serves a second model, priced: the plan allows only the first."""
    node_upsert(
        name="simulator", base_url=f"{sim.url}/v1", region="test-1", attestation="unverified",
        models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256},
                {"model": OTHER_MODEL, "context_window": 8192, "max_output_tokens": 256}],
    )
    price_publish(model=OTHER_MODEL, **SIM_PRICE)
    cache_settle()


def plan(code: str = "starter", **values) -> Plan:
    defaults = {"name": code.title(), "monthly_fee": 10_000_000, "rpm_limit": None, "tpm_limit": None,
                "allowed_models": []}
    return Plan.objects.create(code=code, **{**defaults, **values})


def on_plan(tenant, p: Plan | None) -> None:
    account_plan_set(account=tenant.organization.billing_account, plan=p)
    cache_settle()


def post_chat(server, tenant, body=CHAT):
    return httpx.post(f"{server.api}/chat/completions", headers=tenant.auth(), json=body, timeout=30)


def test_the_plans_rpm_binds_below_the_projects_and_answers_429_with_rate_limit_headers(server, alice, sim_node):
    on_plan(alice, plan(rpm_limit=2))
    first = post_chat(server, alice)
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert post_chat(server, alice).status_code == 200

    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(**CHAT)
    response = limited.value.response
    assert response.status_code == 429 and limited.value.code == "rate_limited"
    assert "plan" in limited.value.message and "2 requests/min" in limited.value.message
    assert (response.headers["x-ratelimit-limit-requests"], response.headers["x-ratelimit-remaining-requests"]) == (
        "2", "0")
    assert int(response.headers["retry-after"]) >= 1 and response.headers["x-ratelimit-reset-requests"].endswith("ms")


def test_a_project_limit_below_the_plans_binds_instead(server, alice, sim_node):
    on_plan(alice, plan(rpm_limit=50))
    services.project_update(project=alice.project, rpm_limit=1)
    cache_settle()
    assert post_chat(server, alice).headers["x-ratelimit-limit-requests"] == "1"
    limited = post_chat(server, alice)
    assert limited.status_code == 429 and "project" in limited.json()["error"]["message"]


def test_the_plans_tpm_caps_the_token_bucket(server, alice, sim_node):
    on_plan(alice, plan(tpm_limit=600))  # refills 10 tokens a second
    first = post_chat(server, alice)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "600"
    # A request above a whole minute's budget needs a full bucket; the first one's tokens are still out.
    too_big = post_chat(server, alice, {**CHAT, "max_tokens": 256, "messages": [{"role": "user", "content": "x " * 3000}]})
    assert too_big.status_code == 429 and "plan" in too_big.json()["error"]["message"]
    assert too_big.headers["x-ratelimit-limit-tokens"] == "600"


def test_without_a_plan_an_organization_has_no_plan_limits(server, alice, charlie, two_models):
    on_plan(alice, plan(rpm_limit=1, allowed_models=[SIM_MODEL]))
    assert post_chat(server, charlie, {**CHAT, "model": OTHER_MODEL}).status_code == 200
    for _ in range(3):
        answer = post_chat(server, charlie)
        assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] != "1"


def forbidden(exc_info) -> None:
    assert exc_info.value.status_code == 403
    body = exc_info.value.body
    error = body.get("error", body) if isinstance(body, dict) else {}
    assert error.get("code") == "model_forbidden", body
    assert OTHER_MODEL in error.get("message", "") and "Starter" in error.get("message", "")


def test_a_model_outside_the_plan_is_forbidden_on_every_endpoint(server, alice, two_models):
    on_plan(alice, plan(allowed_models=[SIM_MODEL]))
    before = alice.wallet.balance
    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    calls = {
        "chat": lambda: client.chat.completions.create(**{**CHAT, "model": OTHER_MODEL}),
        "completions": lambda: client.completions.create(model=OTHER_MODEL, prompt="hi", max_tokens=4),
        "embeddings": lambda: client.embeddings.create(model=OTHER_MODEL, input="hi"),
        "responses": lambda: client.responses.create(model=OTHER_MODEL, input="hi", max_output_tokens=16),
        "images": lambda: client.images.generate(model=OTHER_MODEL, prompt="a cat", size="512x512"),
    }
    for name, call in calls.items():
        with pytest.raises(openai.PermissionDeniedError) as refused:
            call()
        forbidden(refused)
        assert refused.value.code == "model_forbidden" and refused.value.param == "model", name

    claude = anthropic.Anthropic(base_url=server.url, api_key=alice.secret_key, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        claude.messages.create(model=OTHER_MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "permission_error"
    forbidden(refused)
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.count_tokens(model=OTHER_MODEL, messages=[{"role": "user", "content": "hi"}])

    run = httpx.post(f"{server.api}/agents/runs", headers=alice.auth(), timeout=30,
                     json={"input": "hi", "model": OTHER_MODEL, "max_tokens": 2000})
    assert run.status_code == 403 and run.json()["error"]["code"] == "model_forbidden"

    # Nothing was held or charged; the allowed model still works.
    assert alice.wallet.balance == before and alice.wallet.reserved == 0
    assert client.chat.completions.create(**CHAT).choices[0].message.content


def test_models_lists_only_the_plans_models(server, alice, two_models):
    client = openai.OpenAI(base_url=server.api, api_key=alice.secret_key, max_retries=0)
    assert {m.id for m in client.models.list()} == {SIM_MODEL, OTHER_MODEL}
    on_plan(alice, plan(allowed_models=[SIM_MODEL, "not-served-anywhere"]))
    assert [m.id for m in client.models.list()] == [SIM_MODEL]
    assert client.models.retrieve(SIM_MODEL).id == SIM_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(OTHER_MODEL)


def test_a_plan_change_reaches_the_gateway_at_once(server, alice, two_models):
    on_plan(alice, plan(allowed_models=[SIM_MODEL], rpm_limit=100))
    assert post_chat(server, alice, {**CHAT, "model": OTHER_MODEL}).status_code == 403
    on_plan(alice, Plan.objects.create(code="bigger", name="Bigger", allowed_models=[SIM_MODEL, OTHER_MODEL],
                                       rpm_limit=7))
    served = post_chat(server, alice, {**CHAT, "model": OTHER_MODEL})
    assert served.status_code == 200 and served.headers["x-ratelimit-limit-requests"] == "7"
    on_plan(alice, None)
    assert post_chat(server, alice).headers["x-ratelimit-limit-requests"] != "7"
