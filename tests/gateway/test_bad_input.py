"""Bad input on every paid endpoint: the right status, the protocol's error shape, nothing reserved."""
import httpx
import pytest

from billing.models import Transfer
from tests.conftest import SIM_MODEL

MSG = [{"role": "user", "content": "hi"}]
# endpoint -> (a valid body, the field that must not be empty, the output-cap field)
ENDPOINTS = {
    "chat/completions": ({"model": SIM_MODEL, "messages": MSG, "max_tokens": 4}, "messages", "max_tokens"),
    "completions": ({"model": SIM_MODEL, "prompt": "hi", "max_tokens": 4}, "prompt", "max_tokens"),
    "embeddings": ({"model": SIM_MODEL, "input": "hi"}, "input", None),
    "responses": ({"model": SIM_MODEL, "input": "hi", "max_output_tokens": 4}, "input", "max_output_tokens"),
    "messages": ({"model": SIM_MODEL, "messages": MSG, "max_tokens": 4}, "messages", "max_tokens"),
}


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.url.path.startswith("/v1/messages"):  # Anthropic's shape on Anthropic's route
        assert body["type"] == "error" and body["request_id"] == response.headers["x-request-id"]
        return body["error"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


@pytest.fixture
def post(server, alice, sim_node):
    def send(path, body=None, content=None, headers=None):
        return httpx.post(f"{server.api}/{path}", headers={**alice.auth(), **(headers or {})}, json=body,
                          content=content, timeout=30)
    yield send
    assert not Transfer.objects.filter(kind="usage").exists()  # nothing was ever reserved
    assert alice.wallet.reserved == 0


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_kind_of_bad_body_is_refused_in_the_envelope(post, path):
    valid, required, cap = ENDPOINTS[path]
    assert "not valid JSON" in error_of(post(path, content=b'{"model": '), 400)["message"]
    assert "UTF-8" in error_of(post(path, content=b'{"model": "\xff\xfe"}'), 400)["message"]
    assert error_of(post(path, content=b"[1, 2]"), 400)["message"]
    assert error_of(post(path, content=b""), 400)["message"]
    wrong_type = error_of(post(path, {**valid, "model": 5}), 400)
    assert "model" in wrong_type["message"]
    empty = error_of(post(path, {**valid, required: [] if required != "prompt" else []}), 400)
    assert required in empty["message"]
    assert error_of(post(path, {**valid, "model": "no-such-model"}), 404)["message"]
    if cap:
        assert cap in error_of(post(path, {**valid, cap: 1_000_000}), 400)["message"]
    huge = b'{"model": "sim-small", "input": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert error_of(post(path, content=huge), 413)["message"]


@pytest.mark.parametrize("path", ["embeddings"])
def test_publishable_keys_cannot_call_server_side_endpoints(server, alice, sim_node, path):
    headers = {"Authorization": f"Bearer {alice.publishable_key}", "Origin": "https://app.alice.example"}
    response = httpx.post(f"{server.api}/{path}", headers=headers, json=ENDPOINTS[path][0])
    assert error_of(response, 403)["code"] == "permission_denied"
    for admin in ("keys", "balance", "models"):
        assert httpx.get(f"{server.api}/{admin}", headers=headers).status_code == 403
    assert not Transfer.objects.filter(kind="usage").exists()


def test_image_input_to_a_text_only_model_is_a_clear_400(post):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"model": SIM_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [image]}]}
    error = error_of(post("chat/completions", body), 400)
    assert error["code"] == "unsupported_content" and "image" in error["message"]
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    body["messages"][0]["content"] = [{"type": "text", "text": "listen"}, audio]
    assert "audio" in error_of(post("chat/completions", body), 400)["message"]
    unknown = {"type": "file", "file": {"file_id": "x"}}
    body["messages"][0]["content"] = [unknown]
    assert error_of(post("chat/completions", body), 400)["code"] == "invalid_request"


def test_a_response_id_no_response_can_have_answers_404_not_500(server, alice):
    for response_id in ("%00", "resp_%00abc", "r%C3%A9sp"):  # a NUL byte once reached PostgreSQL and failed there
        response = httpx.get(f"{server.api}/responses/{response_id}", headers=alice.auth())
        assert error_of(response, 404)["code"] == "not_found"
