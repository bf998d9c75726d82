"""A hypothesis fuzz of the headers that name state across requests, against a live server:

* Last-Event-ID on GET /v1/streams/{id} and on a stream request's idempotent replay: garbage,
  huge, negative, unicode, and ids of another tenant's stream. Either exactly the events after
  the id (a well-formed one), or 400 in the envelope; another tenant's stream is 404; never a 5xx.
* Idempotency-Key values (length, charset): at most 255 printable characters are accepted, anything
  else is 400 in the envelope; a key reused with another body is 422; a key reused concurrently is
  charged once, its duplicates replayed or told 409 — never a 5xx, never a second charge.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from billing.invariants import check_ledger
from billing.models import Transfer
from tests.conftest import SIM_MODEL
from tests.security.helpers import assert_envelope

pytestmark = [pytest.mark.postgres]

EXAMPLES = 60
STREAM = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "echo: " + " ".join(f"w{i}" for i in range(12))}],
          "max_tokens": 40, "stream": True}
_EVENT = re.compile(r"^(?:evt_)?(\d{1,9})$")  # what a well-formed Last-Event-ID is (gateway/streams.py)


def fuzz_settings(examples: int = EXAMPLES):
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def header_value(text: str) -> bytes:
    """``text`` as a header value can carry it on the wire (UTF-8, no control characters, no
    surrounding whitespace: those the HTTP client itself refuses to send)."""
    raw = text.encode("utf-8", "surrogatepass")
    return bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip(b" \t")


def event_ids_of(body: str) -> list[int]:
    return [int(line[len("id: evt_"):]) for line in body.split("\n") if line.startswith("id: evt_")]


LAST_EVENT_IDS = st.one_of(
    st.text(max_size=64),  # garbage, unicode
    st.text(alphabet="evt_-+0123456789 .xX", max_size=24),  # near misses
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: f"evt_{n}"),  # negative, huge
    st.integers(min_value=0, max_value=40).map(lambda n: f"evt_{n}"),  # real positions, and past the end
    st.integers(min_value=0, max_value=40).map(str),
    st.integers(min_value=1, max_value=16_000).map(lambda n: "evt_" + "9" * n),  # huge headers
)


@pytest.fixture
def streams(server, alice, charlie, sim_node):
    """One finished stream of alice's and one of charlie's; how many events alice's has."""
    ids = {}
    for name, tenant in (("alice", alice), ("charlie", charlie)):
        with httpx.stream("POST", f"{server.api}/chat/completions", headers=tenant.auth(), json=STREAM,
                          timeout=30) as response:
            assert response.status_code == 200
            body = response.read().decode()
        ids[name] = response.headers["x-request-id"]
        if name == "alice":
            ids["total"] = len(event_ids_of(body))
            assert ids["total"] > 3 and body.rstrip().endswith("data: [DONE]")
    return ids


def check_resumed(response: httpx.Response, value: bytes, total: int) -> None:
    """The events after a well-formed id, or a 400 in the envelope for anything else."""
    text = value.decode("latin-1")  # how the server reads a header (RFC 9110: opaque octets)
    match = _EVENT.match(text.strip())
    if text.strip() and not match:
        assert assert_envelope(response, 400)["code"] == "invalid_request", (value, response.text)
        return
    assert response.status_code == 200, (value, response.status_code, response.text[:300])
    after = int(match.group(1)) if match else 0
    assert event_ids_of(response.text) == list(range(after + 1, total + 1)), (value, response.text[:300])


def test_last_event_id_on_get_streams_is_honoured_or_refused(server, alice, streams):
    url = f"{server.api}/streams/{streams['alice']}"

    @fuzz_settings()
    @given(st.one_of(LAST_EVENT_IDS, st.binary(max_size=64)))
    def resume(raw):
        value = header_value(raw) if isinstance(raw, str) else bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip()
        response = httpx.get(url, headers={**alice.auth(), "Last-Event-ID": value}, timeout=30)
        check_resumed(response, value, streams["total"])

    resume()


@pytest.mark.redis
def test_a_last_event_id_past_the_end_ends_the_resume_at_once(server, alice, sim, streams):
    """Found by the fuzz above: a resume from past a finished stream's end (read back from Redis)
    waited for events that never come, holding the connection for GATEWAY_MAX_REQUEST_SECONDS."""
    for after in (streams["total"] + 1, streams["total"] + 5, 999_999_999):
        started = time.monotonic()
        response = httpx.get(f"{server.api}/streams/{streams['alice']}", timeout=30,
                             headers={**alice.auth(), "Last-Event-ID": f"evt_{after}"})
        assert response.status_code == 200 and event_ids_of(response.text) == []
        assert time.monotonic() - started < 3
    # ...and one still running, resumed from past where it will end, ends when it does.
    sim.configure(tokens_per_s=20)
    with httpx.stream("POST", f"{server.api}/chat/completions", headers=alice.auth(), json=STREAM,
                      timeout=30) as running:
        request_id = running.headers["x-request-id"]
        started = time.monotonic()
        resumed = httpx.get(f"{server.api}/streams/{request_id}", timeout=30,
                            headers={**alice.auth(), "Last-Event-ID": "evt_500"})
        running.read()
    assert resumed.status_code == 200 and event_ids_of(resumed.text) == []
    assert time.monotonic() - started < 10


def test_another_tenants_stream_is_not_found_whatever_the_last_event_id(server, alice, charlie, streams):
    @fuzz_settings(12)  # each example waits 0.5 s on the missing stream (a stream being opened)
    @given(LAST_EVENT_IDS)
    def resume(raw):
        value = header_value(raw)
        for tenant, stream in ((alice, streams["charlie"]), (charlie, streams["alice"])):
            response = httpx.get(f"{server.api}/streams/{stream}", headers={**tenant.auth(), "Last-Event-ID": value},
                                 timeout=30)
            # A malformed id is refused first (400), for any stream alike: the answer is the one a
            # stream that does not exist gets, so it says nothing about the other tenant's.
            code = assert_envelope(response, {400, 404})["code"]
            missing = httpx.get(f"{server.api}/streams/req_0000000000000000000000", timeout=30,
                                headers={**tenant.auth(), "Last-Event-ID": value})
            assert (response.status_code, code) == (missing.status_code, assert_envelope(missing)["code"])

    resume()


def test_last_event_id_on_a_replayed_stream_request(server, alice, sim_node, sim):
    """A stream request retried with its Idempotency-Key replays the stored events after Last-Event-ID."""
    headers = {**alice.auth(), "Idempotency-Key": "fuzz-stream-replay"}
    first = httpx.post(f"{server.api}/chat/completions", headers=headers, json=STREAM, timeout=30)
    assert first.status_code == 200
    total = len(event_ids_of(first.text))

    @fuzz_settings()
    @given(LAST_EVENT_IDS)
    def replay(raw):
        value = header_value(raw)
        response = httpx.post(f"{server.api}/chat/completions", headers={**headers, "Last-Event-ID": value},
                              json=STREAM, timeout=30)
        check_resumed(response, value, total)
        if response.status_code == 200:
            assert response.headers["idempotent-replayed"] == "true"

    replay()
    assert sim.stats()["requests"] == 1  # generated once, however often it was replayed
    assert Transfer.objects.filter(kind="usage").count() == 1


# --- Idempotency-Key ------------------------------------------------------------------------------

CHAT = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEYS = st.one_of(
    st.text(min_size=1, max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300),
    st.integers(min_value=250, max_value=8000).map(lambda n: "k" * n),
)


def accepted(value: bytes) -> bool:
    """What the server accepts: at most 255 printable characters (gateway/idempotency.py)."""
    text = value.decode("latin-1")
    return 0 < len(text) <= 255 and text.isprintable()


def test_idempotency_keys_of_any_length_and_charset(server, alice, sim_node):
    seen: dict[bytes, dict] = {}

    @fuzz_settings()
    @given(KEYS)
    def send(raw):
        value = header_value(raw)
        if not value:
            return
        response = httpx.post(f"{server.api}/chat/completions",
                              headers={**alice.auth(), "Idempotency-Key": value}, json=CHAT, timeout=30)
        if not accepted(value):
            assert assert_envelope(response, 400)["code"] == "invalid_request", (value, response.text)
            return
        assert response.status_code == 200, (value, response.status_code, response.text[:300])
        if value in seen:
            assert response.headers["idempotent-replayed"] == "true" and response.json() == seen[value]
        else:
            seen[value] = response.json()
        other = httpx.post(f"{server.api}/chat/completions", headers={**alice.auth(), "Idempotency-Key": value},
                           json={**CHAT, "max_tokens": 3}, timeout=30)
        assert assert_envelope(other, 422)["code"] == "idempotency_key_reused"

    send()
    assert Transfer.objects.filter(kind="usage").count() == len(seen) > 10  # one charge per accepted key
    assert check_ledger() == []


def test_a_key_reused_concurrently_is_charged_once(server, alice, sim_node, sim):
    sim.configure(ttft_ms=300)
    start = threading.Barrier(16)

    def send(key: str) -> httpx.Response:
        start.wait()
        return httpx.post(f"{server.api}/chat/completions", headers={**alice.auth(), "Idempotency-Key": key},
                          json=CHAT, timeout=30)

    for key in ("concurrent-1", "ключ-ascii-only-on-the-wire".encode().hex(), "x" * 255):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, [key] * 16))
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 409}, statuses
        for answer in answers:
            if answer.status_code == 409:
                assert assert_envelope(answer)["code"] == "idempotency_in_progress"
        fresh = [a for a in answers if a.status_code == 200 and "idempotent-replayed" not in a.headers]
        assert len(fresh) == 1, statuses  # exactly one ran
        assert all(a.json() == fresh[0].json() for a in answers if a.status_code == 200)
    assert sim.stats()["requests"] == 3
    assert Transfer.objects.filter(kind="usage").count() == 3 and check_ledger() == []
