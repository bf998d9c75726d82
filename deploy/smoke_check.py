"""The checks of deploy/smoke.sh (run by it, with its environment).

    python deploy/smoke_check.py seed --sim URL --measurement HEX     → JSON of the keys it made
    python deploy/smoke_check.py check --base https://localhost:P --web1 https://localhost:P1 ...

``seed`` makes what an operator and a customer would: a node (the simulator, attested through the
real flow), prices, an organization with credit, a secret key and a key limited to RPM_LIMIT
requests a minute. ``check`` goes through nginx over https and fails (exit 1) on the first
thing that is not as it should be, printing what it checked.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "sim-small"
IMAGE_MODEL = "sim-image"
RPM_LIMIT = 4
WORDS = [f"w{i}" for i in range(24)]


def step(message: str) -> None:
    print(f"  ok  {message}", flush=True)


class Failed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


# --- seed ---------------------------------------------------------------------------------


def seed(args) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.contrib.auth import get_user_model

    from billing import services as billing
    from console import services
    from console.models import ApiKey
    from nodes.attestation.services import measurement_allow, node_attest
    from nodes.services import node_upsert

    measurement_allow(value=args.measurement, description="node simulator (smoke)")
    node = node_upsert(
        name="smoke-simulator", base_url=f"{args.sim}/v1", region="smoke-1", attestation="unverified",
        models=[{"model": MODEL, "context_window": 8192, "max_output_tokens": 256},
                {"model": IMAGE_MODEL, "upstream_model": MODEL}],
    )
    attestation = node_attest(node=node)
    if attestation.result != "verified":
        raise SystemExit(f"the simulator's attestation failed: {attestation.reason} {attestation.detail}")
    billing.price_publish(model=MODEL, input_per_mtok=1_000_000, output_per_mtok=2_000_000)
    billing.price_publish(model=IMAGE_MODEL, input_per_mtok=0, output_per_mtok=0, per_image={"512x512": 10_000})

    user = get_user_model().objects.create_user(username="smoke", email="smoke@example.com", password="smoke-" * 4)
    organization = services.organization_create(name="Smoke Org", owner=user)
    project = organization.projects.get()
    billing.wallet_credit(wallet=billing.customer_wallet(organization=organization), amount=10_000_000,
                          reference="seed:smoke")
    _, secret = services.api_key_create(project=project, kind=ApiKey.Kind.SECRET, name="smoke")
    _, limited = services.api_key_create(project=project, kind=ApiKey.Kind.SECRET, name="smoke low rpm",
                                         rpm_limit=RPM_LIMIT)
    json.dump({"key": secret, "limited_key": limited, "node": node.public_id}, sys.stdout)


# --- check --------------------------------------------------------------------------------------


def sse_events(lines) -> list[tuple[int, str]]:
    out, current = [], None
    for line in lines:
        if line.startswith("id: "):
            current = int(line[len("id: evt_"):])
        elif line.startswith("data: "):
            out.append((current, line[len("data: "):]))
    return out


def text_of(events) -> str:
    text = ""
    for _, data in events:
        if data != "[DONE]":
            for choice in json.loads(data).get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


def check(args) -> None:
    keys = json.loads(Path(args.keys).read_text())
    auth = {"Authorization": f"Bearer {keys['key']}"}
    client = httpx.Client(verify=args.cacert, timeout=30)
    base, web1, web2 = args.base, args.web1, args.web2
    echo = {"model": MODEL, "messages": [{"role": "user", "content": "echo: " + " ".join(WORDS)}], "max_tokens": 64}

    # health and readiness through nginx, over TLS
    live = client.get(f"{base}/healthz")
    expect(live.status_code == 200 and live.json() == {"status": "ok"}, f"/healthz: {live.status_code} {live.text}")
    ready = client.get(f"{base}/readyz")
    expect(ready.status_code == 200 and ready.json()["status"] == "ready", f"/readyz: {ready.status_code} {ready.text}")
    expect(live.http_version in ("HTTP/1.1", "HTTP/2"), live.http_version)
    step(f"https /healthz and /readyz through nginx ({ready.json()['checks']})")

    # /metrics: not through nginx, yes on each process locally
    public = client.get(f"{base}/metrics")
    expect(public.status_code == 403, f"/metrics through nginx answered {public.status_code}, not 403")
    for name, url in (("web1", args.local1), ("web2", args.local2)):
        local = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {args.metrics_token}"})
        expect(local.status_code == 200 and "platform_http_requests_total" in local.text, f"{name} /metrics: {local.status_code}")
        expect(httpx.get(f"{url}/metrics").status_code == 401, f"{name} /metrics without the token was served")
    step("/metrics refused through nginx (403), served on each process locally with the token")

    # a chat, not streamed, through nginx
    plain = client.post(f"{base}/v1/chat/completions", json=echo, headers=auth)
    expect(plain.status_code == 200, f"chat: {plain.status_code} {plain.text}")
    expect(plain.json()["choices"][0]["message"]["content"] == " ".join(WORDS), f"chat answer: {plain.text[:200]}")
    step(f"chat through nginx → {plain.headers.get('x-served-by')} ({plain.json()['usage']['total_tokens']} tokens)")

    # a chat, streamed through nginx (no buffering: events arrive as the node makes them)
    with client.stream("POST", f"{base}/v1/chat/completions", headers=auth,
                       json={**echo, "stream": True, "stream_options": {"include_usage": True}}) as response:
        expect(response.status_code == 200, f"stream: {response.status_code}")
        expect(response.headers["content-type"].startswith("text/event-stream"), response.headers["content-type"])
        events = sse_events(response.iter_lines())
    expect(events[-1][1] == "[DONE]" and text_of(events) == " ".join(WORDS), f"stream answer: {events[-3:]}")
    step(f"streamed chat through nginx: {len(events)} events")

    # a stream interrupted on web1 and resumed with Last-Event-ID on web2, while the node still generates
    httpx.post(f"{args.sim}/_sim/config", json={"tokens_per_s": 40}).raise_for_status()
    first = []
    with client.stream("POST", f"{web1}/v1/chat/completions", headers=auth,
                       json={**echo, "stream": True, "stream_options": {"include_usage": True}}) as response:
        expect(response.status_code == 200, f"stream on web1: {response.status_code}")
        expect(response.headers["x-served-by"] == "web1", f"first part served by {response.headers.get('x-served-by')}")
        request_id = response.headers["x-request-id"]
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            first = sse_events(lines)
            if len(first) == 5 and line == "":
                break  # the client goes away mid-answer
    with client.stream("GET", f"{web2}/v1/streams/{request_id}", headers={**auth, "Last-Event-ID": "evt_5"}) as response:
        expect(response.status_code == 200, f"resume on web2: {response.status_code}")
        expect(response.headers["x-served-by"] == "web2", f"resume served by {response.headers.get('x-served-by')}")
        rest = sse_events(response.iter_lines())
    ids = [i for i, _ in first + rest]
    expect(ids == list(range(1, len(ids) + 1)), f"events lost or repeated: {ids}")
    expect(text_of(first + rest) == " ".join(WORDS) and rest[-1][1] == "[DONE]", "resumed text differs")
    httpx.post(f"{args.sim}/_sim/config", json={"tokens_per_s": 0}).raise_for_status()
    step(f"stream {request_id}: events 1-5 from web1, 6-{ids[-1]} resumed on web2 with Last-Event-ID")

    # the rate limit holds across both processes: RPM_LIMIT a minute for the key, in total
    limited = {"Authorization": f"Bearer {keys['limited_key']}"}
    small = {**echo, "max_tokens": 4}
    outcomes = []
    for i in range(RPM_LIMIT + 3):
        url = web1 if i % 2 == 0 else web2
        response = client.post(f"{url}/v1/chat/completions", json=small, headers=limited)
        outcomes.append((response.status_code, response.headers.get("x-served-by")))
    accepted = [who for status, who in outcomes if status == 200]
    expect(len(accepted) == RPM_LIMIT, f"{len(accepted)} accepted for an RPM of {RPM_LIMIT}: {outcomes}")
    expect(set(accepted) == {"web1", "web2"}, f"the accepted ones were not spread over both processes: {outcomes}")
    expect(all(status == 429 for status, _ in outcomes[RPM_LIMIT:]), f"beyond the limit: {outcomes}")
    step(f"RPM {RPM_LIMIT} held across web1+web2: {[s for s, _ in outcomes]}")

    # a Celery job: image generation runs on the worker (the web processes only queue it)
    image = client.post(f"{base}/v1/images/generations", headers=auth, timeout=90,
                        json={"model": IMAGE_MODEL, "prompt": "a smoke test", "n": 1, "size": "512x512",
                              "response_format": "b64_json"})
    expect(image.status_code == 200, f"image job: {image.status_code} {image.text[:300]}")
    expect(len(image.json()["data"]) == 1 and image.json()["data"][0]["b64_json"], "no image")
    step("image generation job done by the Celery worker")

    # money: nothing held, the ledger balances
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from billing.invariants import check_ledger
    from billing.models import Transfer

    deadline = time.monotonic() + 15
    while Transfer.objects.filter(status="pending").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    expect(not Transfer.objects.filter(status="pending").exists(), "reservations still pending")
    problems = check_ledger()
    expect(problems == [], f"ledger: {problems}")
    step(f"ledger balanced, {Transfer.objects.filter(kind='usage', status='posted').count()} usage transfers posted, none pending")


def drain(args) -> None:
    """SIGTERM web1 while a stream through it is open: web1's readiness turns 503, new requests through
    nginx keep succeeding (on web2), the open stream finishes whole, web1 exits."""
    import signal
    import threading

    keys = json.loads(Path(args.keys).read_text())
    auth = {"Authorization": f"Bearer {keys['key']}"}
    client = httpx.Client(verify=args.cacert, timeout=60)
    httpx.post(f"{args.sim}/_sim/config", json={"tokens_per_s": 8}).raise_for_status()  # ~3 s of stream
    body = {"model": MODEL, "messages": [{"role": "user", "content": "echo: " + " ".join(WORDS)}], "max_tokens": 64,
            "stream": True}
    events, started, done = [], threading.Event(), threading.Event()

    def read() -> None:
        with client.stream("POST", f"{args.web1}/v1/chat/completions", json=body, headers=auth) as response:
            for line in response.iter_lines():
                events.append(line)
                if line.startswith("data: "):
                    started.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    expect(started.wait(15), "the stream on web1 did not start")
    os.kill(args.web1_pid, signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{args.local1}/readyz")
    expect(ready.status_code == 503 and ready.json() == {"status": "draining"}, f"web1 /readyz while draining: {ready.status_code}")
    served = []
    while not done.is_set():
        response = client.post(f"{args.base}/v1/chat/completions", headers=auth,
                               json={**body, "stream": False, "max_tokens": 4})
        expect(response.status_code == 200, f"a request through nginx failed while web1 drained: {response.status_code}")
        served.append(response.headers["x-served-by"])
        time.sleep(0.1)
    parsed = sse_events(events)
    expect(parsed and parsed[-1][1] == "[DONE]" and text_of(parsed) == " ".join(WORDS), "the draining stream was cut")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(args.web1_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise Failed("web1 did not exit after draining")
    httpx.post(f"{args.sim}/_sim/config", json={"tokens_per_s": 0}).raise_for_status()
    step(f"SIGTERM web1 with a stream open: readiness 503, the stream finished whole ({len(parsed)} events), "
         f"{len(served)} requests through nginx meanwhile all 200 (served by {sorted(set(served))}), web1 exited")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--sim", required=True)
    s.add_argument("--measurement", required=True)
    c = sub.add_parser("check")
    for name in ("--base", "--web1", "--web2", "--local1", "--local2", "--cacert", "--keys", "--metrics-token", "--sim"):
        c.add_argument(name, required=True)
    d = sub.add_parser("drain")
    for name in ("--base", "--web1", "--local1", "--cacert", "--keys", "--sim"):
        d.add_argument(name, required=True)
    d.add_argument("--web1-pid", type=int, required=True)
    args = parser.parse_args()
    if args.command == "seed":
        seed(args)
        return
    try:
        (check if args.command == "check" else drain)(args)
    except Failed as exc:
        print(f"FAIL {exc}", flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
