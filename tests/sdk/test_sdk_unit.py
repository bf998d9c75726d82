"""The SDK without a server: http refusal, keys from the environment, backoff and Retry-After,
SSE parsing, client key pairs in password-protected PEM, the envelope round trip of SEALED.md."""
import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from private_inference import (
    AuthenticationError,
    Client,
    ClientKeyPair,
    InvalidRequestError,
    SecurityError,
    crypto,
)
from private_inference._errors import (
    APIError,
    InsufficientBalanceError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    from_body,
)
from private_inference._retry import RetryPolicy, parse_retry_after, status_retryable
from private_inference._transport import _SSEParser


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("PI_API_KEY", "OPENAI_API_KEY", "PI_BASE_URL", "PI_TRUST_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PI_CONFIG_DIR", str(tmp_path / "config"))


@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.5:8000", "http://api.example.com/v1"])
def test_plain_http_is_refused_except_to_localhost(url):
    with pytest.raises(InvalidRequestError) as refused:
        Client(api_key="k", base_url=url)
    assert refused.value.code == "insecure_transport"
    assert Client(api_key="k", base_url=url, allow_http=True).base_url.startswith("http://")


@pytest.mark.parametrize("url", ["http://localhost:8000", "http://127.0.0.1:9", "http://[::1]:8000", "https://example.com"])
def test_https_and_loopback_http_are_fine(url):
    assert Client(api_key="k", base_url=url + "/v1").base_url == url  # an OpenAI-style /v1 is accepted


def test_key_and_base_url_from_the_environment(monkeypatch):
    with pytest.raises(AuthenticationError):
        Client()
    monkeypatch.setenv("OPENAI_API_KEY", "sk_openai")
    assert Client().api_key == "sk_openai"
    monkeypatch.setenv("PI_API_KEY", "sk_pi")
    monkeypatch.setenv("PI_BASE_URL", "https://pi.example")
    client = Client()
    assert (client.api_key, client.base_url) == ("sk_pi", "https://pi.example")
    assert Client(api_key="explicit").api_key == "explicit"


def test_backoff_is_full_jitter_capped_and_retry_after_wins():
    policy = RetryPolicy(max_retries=5, initial_delay=0.5, max_delay=4)
    for attempt, cap in [(0, 0.5), (1, 1), (2, 2), (3, 4), (6, 4)]:
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap * 0.8 and min(delays) < cap * 0.2
    assert policy.delay(0, retry_after=3) == 3
    assert parse_retry_after("2") == 2 and parse_retry_after("1.5") == 1.5 and parse_retry_after("soon") is None
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT") == 60  # capped
    assert status_retryable(429) and status_retryable(503) and not status_retryable(400)
    assert status_retryable(409, "idempotency_in_progress") and not status_retryable(409, "node_key_mismatch")


def test_error_envelope_maps_to_typed_exceptions():
    def envelope(code, type_, status):
        return from_body(status, {"error": {"type": type_, "code": code, "message": "m", "request_id": "req_1"}},
                         headers={"retry-after": "2"})

    cases = [("invalid_api_key", "authentication_error", 401, AuthenticationError),
             ("insufficient_balance", "billing_error", 402, InsufficientBalanceError),
             ("permission_denied", "permission_error", 403, PermissionDeniedError),
             ("invalid_request", "invalid_request_error", 400, InvalidRequestError),
             ("rate_limited", "rate_limit_error", 429, RateLimitError),
             ("no_nodes_available", "api_error", 503, ServerError),
             ("stream_cancelled", "api_error", 499, APIError)]
    for code, type_, status, cls in cases:
        error = envelope(code, type_, status)
        assert type(error) is cls and (error.code, error.request_id, error.status_code) == (code, "req_1", status)
    assert envelope("rate_limited", "rate_limit_error", 429).retry_after == 2
    # an error event inside a stream has no status: the type decides
    assert isinstance(from_body(None, {"error": {"type": "rate_limit_error", "message": "m"}}), RateLimitError)


def test_sse_parser_handles_ids_events_comments_and_multiline_data():
    parser = _SSEParser()
    lines = [": heartbeat", "id: evt_1", "event: sealed.start", "data: {\"a\":", "data: 1}", "", "", "id: evt_2",
             "data: [DONE]", ""]
    events = [e for e in (parser.feed(line) for line in lines) if e]
    assert [(e.id, e.event, e.data) for e in events] == [("evt_1", "sealed.start", '{"a":\n1}'), ("evt_2", None, "[DONE]")]


def test_client_key_pair_pem_is_password_protected_and_0600(tmp_path):
    pair = ClientKeyPair.generate()
    path = pair.save(tmp_path / "keys" / "client.pem", "correct horse")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    pem = path.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert ClientKeyPair.load(path, "correct horse").public_b64 == pair.public_b64
    for wrong in ("wrong", None):
        with pytest.raises(SecurityError) as failed:
            ClientKeyPair.load(path, wrong)
        assert failed.value.reason == "bad_key_file"
    ed = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    other = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(SecurityError):
        ClientKeyPair.from_pem(other, None)


def test_envelope_follows_the_spec_byte_for_byte():
    """Rebuild the content key from the spec's formulas, independently of the SDK's code path."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    node = x25519.X25519PrivateKey.generate()
    node_pub = crypto.b64(crypto.raw_public(node.public_key()))
    client = ClientKeyPair()
    body = {"model": "m", "max_tokens": 9, "stream": True, "messages": [{"role": "user", "content": "héllo"}],
            "temperature": 0.5}
    sealed = crypto.seal_request(body, tier="maximum", recipient_key=node_pub, node_id="node_1",
                                 client_public_key=client.public_b64)
    env = sealed.envelope
    assert set(env) == {"version", "tier", "payload_id", "recipient", "header", "client_public_key",
                        "ephemeral_public_key", "nonce", "ciphertext"}
    assert env["header"] == {"model": "m", "max_tokens": 9, "stream": True}
    assert env["recipient"] == {"node_id": "node_1", "encryption_key": node_pub}
    assert len(crypto.unb64u(env["payload_id"])) == 16 and "=" not in env["payload_id"]
    assert len(base64.b64decode(env["nonce"])) == 12
    eph = base64.b64decode(env["ephemeral_public_key"])
    shared = node.exchange(x25519.X25519PublicKey.from_public_bytes(eph))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph + base64.b64decode(node_pub),
               info=b"pi-sealed/v1/request").derive(shared)
    ad = json.dumps({k: env[k] for k in ("version", "tier", "payload_id", "recipient", "header", "client_public_key")},
                    sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    plaintext = AESGCM(key).decrypt(base64.b64decode(env["nonce"]), base64.b64decode(env["ciphertext"]), ad)
    assert json.loads(plaintext) == {"messages": body["messages"], "temperature": 0.5}  # header fields not inside
    assert b"\xc3\xa9" in plaintext and b" " not in plaintext.replace(b"h\xc3\xa9llo", b"")  # UTF-8, no whitespace
    assert sealed.request_hash == __import__("hashlib").sha256(base64.b64decode(env["ciphertext"])).hexdigest()

    # the response direction: the node seals to the client, pieces in order
    sealer = crypto.ResponseSealer(client.public_b64, env["payload_id"])
    opener = crypto.ResponseOpener(client, env["payload_id"])
    opener.start(sealer.ephemeral_public_key)
    first, second = sealer.seal({"n": 1}), sealer.seal({"n": 2})
    with pytest.raises(SecurityError):
        opener.open(second["seq"], second["nonce"], second["ciphertext"])  # out of order
    assert opener.open(**first) == {"n": 1} and opener.open(**second) == {"n": 2}
    with pytest.raises(SecurityError):
        opener.open(**first)  # replayed


def test_receipt_signature_and_fields():
    key = ed25519.Ed25519PrivateKey.generate()
    public = crypto.b64(crypto.raw_public(key.public_key()))
    fields = {"request_id": "req_1", "payload_id": "p", "key_hash": "k", "request_hash": "h", "model": "m",
              "node_id": "node_1", "measurement": "ab", "input_tokens": 3, "output_tokens": 4, "issued_at": 1}
    receipt = crypto.sign_receipt(fields, key)
    assert crypto.verify_receipt(receipt, signing_key=public, expected={"request_id": "req_1", "model": "m"})["output_tokens"] == 4
    with pytest.raises(SecurityError, match="model"):
        crypto.verify_receipt(receipt, signing_key=public, expected={"model": "other"})
    forged = {**receipt, "receipt": crypto.b64(base64.b64decode(receipt["receipt"]).replace(b'"output_tokens":4', b'"output_tokens":3'))}
    with pytest.raises(SecurityError) as failed:
        crypto.verify_receipt(forged, signing_key=public, expected={})
    assert failed.value.reason == "bad_signature"
