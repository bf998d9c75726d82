"""Shared fixtures: three tenants, real server processes, the node simulator.

Tenants follow the style guide: alice owns an organization, bob is a member of
it, charlie is an outsider with an organization of his own.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.dbenv import HAVE_REDIS

ROOT = Path(__file__).resolve().parent.parent
SIM_MODEL = "sim-small"
# 1 micro-unit per input token, 2 per output token, 0.5 per cached input token.
SIM_PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000, "cached_input_per_mtok": 500_000}
# What simulators started by start_simulator() report as their software measurement (allow-listed per test).
SIM_MEASUREMENT = hashlib.sha384(b"node simulator, test build").hexdigest()


async def close_async_resources() -> None:
    """Close this event loop's DB pool, Redis client and HTTP session."""
    from config import asyncdb, redisconn
    from nodes import http

    await asyncdb.close_pools()
    await redisconn.close_async()
    await http.close()


def run_async(coro):
    """Run a coroutine from a sync test, closing what it opened on its loop."""

    async def run():
        try:
            return await coro
        finally:
            await close_async_resources()

    return asyncio.run(run())


@pytest.fixture(autouse=True)
async def _close_loop_resources():
    yield
    await close_async_resources()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    from django.db import connection

    if connection.vendor == "postgresql":
        # The test database need not survive a crash: commits (hundreds of thousands in a run, and
        # the TRUNCATE between transactional tests) don't wait for the WAL flush. Visibility and
        # atomicity are unchanged; every later session (servers, workers) inherits it.
        with django_db_blocker.unblock(), connection.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{connection.settings_dict["NAME"]}" SET synchronous_commit = off')
            cur.execute("SET synchronous_commit = off")
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            connection._pi_superuser = bool(cur.fetchone()[0])
    yield

    if connection.vendor == "postgresql":  # server processes may still hold connections
        with django_db_blocker.unblock(), connection.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def _flush_despite_server_work() -> None:
    """Server processes under test run background work on daemon threads after a request (eager
    Celery: attestation after a registration, a cluster sync, a job). The flush between
    transactional tests TRUNCATEs every table, and PostgreSQL may pick it as the victim of a
    deadlock with such a thread's transaction. The flush is retried: it only empties tables."""
    from django.test import testcases

    original = testcases.TransactionTestCase._fixture_teardown

    def teardown(self):
        for attempt in range(5):
            try:
                return original(self)
            except Exception as exc:  # flush wraps the database's error in a CommandError
                if "deadlock detected" not in f"{exc} {exc.__cause__}" or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    testcases.TransactionTestCase._fixture_teardown = teardown


_flush_despite_server_work()


def _flush_by_delete() -> None:
    """Empty the tables between transactional tests with DELETE, not TRUNCATE.

    A TRUNCATE of the ~45 tables gives each a new file: ~330 ms per test, minutes per run. The
    same transaction first takes every table's ACCESS EXCLUSIVE lock, so it waits for writers in
    flight and blocks new ones exactly as TRUNCATE does, then deletes with foreign-key triggers
    off (session_replication_role, superuser only: else TRUNCATE as before) — ~15 ms."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or not tables or not getattr(self.connection, "_pi_superuser", None):
            return original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        names = [self.quote_name(table) for table in tables]
        return [
            f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE",
            "SET LOCAL session_replication_role = replica",
            *(f"DELETE FROM {name}" for name in names),
        ]

    DatabaseOperations.sql_flush = sql_flush


_flush_by_delete()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_settle() -> None:
    """Let server processes see a change: pub/sub is near-instant; without Redis they re-read after 1 s."""
    time.sleep(0.15 if HAVE_REDIS else 1.1)


class Process:
    """A child process whose output is kept (and shown when a test fails to start it)."""

    def __init__(self, args: list[str], *, env: dict | None = None, ready: str | None = None, timeout: float = 60):
        self.args = args
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self._ready = threading.Event()
        self._marker = ready
        threading.Thread(target=self._pump, daemon=True).start()
        if ready is not None:
            self.wait_ready(timeout)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            if self._marker and self._marker in line:
                self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.args} did not start:\n{''.join(self.output[-40:])}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- attestation ------------------------------------------------------------------------


@functools.cache
def attestation_pki() -> Path:
    """The test root, trusted through ATTESTATION_TRUST_ROOTS (set in tests/dbenv.py), and one node
    attestation key and certificate under it ("simulator.key"/".pem"), made once per run the way an
    operator would: with manage.py attestation_ca."""
    from django.conf import settings
    from django.core.management import call_command

    directory = Path(settings.ATTESTATION_TRUST_ROOTS[0]).parent
    if not (directory / "simulator.pem").exists():
        call_command("attestation_ca", "init", "--dir", str(directory), "--force", stdout=io.StringIO())
        call_command("attestation_ca", "issue", "--dir", str(directory), "--node", "simulator", "--force", stdout=io.StringIO())
    return directory


@pytest.fixture
def allowed_measurement(transactional_db):
    """The simulators' measurement in the allow-list."""
    from nodes.attestation.services import measurement_allow

    return measurement_allow(value=SIM_MEASUREMENT, description="node simulator (tests)")


def attest(node):
    """Attest ``node`` for real: a nonce, its simulator's evidence over HTTP, verification; it must pass.
    Routers in every process hear of it (cache_settle before relying on them)."""
    from nodes.attestation.services import node_attest

    attestation = node_attest(node=node)
    assert attestation.result == "verified", (attestation.reason, attestation.detail)
    return attestation


# --- node simulator ---------------------------------------------------------------


@dataclass
class Simulator:
    url: str
    process: Process

    def configure(self, **config) -> dict:
        return httpx.post(f"{self.url}/_sim/config", json=config).raise_for_status().json()

    def reset(self) -> None:
        # A stream an earlier test dropped may still be generating (streams outlive their
        # clients for the resume window): let it end, or its outcome lands in this test's stats.
        deadline = time.monotonic() + 10
        while self.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        httpx.post(f"{self.url}/_sim/reset").raise_for_status()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_sim/stats").raise_for_status().json()


def start_simulator(*extra: str, attestation: str | None = "honest") -> Simulator:
    """A simulator process; it attests in the given mode (honest, forged, stale) with the test
    node certificate and SIM_MEASUREMENT, or not at all (None)."""
    port = free_port()
    args = [sys.executable, "manage.py", "run_node_simulator", "--port", str(port), "--models", "sim-small,sim-large"]
    if attestation is not None:
        pki = attestation_pki()
        args += [
            "--attestation-key", str(pki / "simulator.key"), "--attestation-certs", str(pki / "simulator.pem"),
            "--attestation-measurement", SIM_MEASUREMENT, "--attestation-mode", attestation,
        ]
    process = Process([*args, *extra], ready="listening on")
    return Simulator(url=f"http://127.0.0.1:{port}", process=process)


def start_local_node(*extra: str) -> tuple[Process, str]:
    """``manage.py run_local_node`` (SmolLM2 and, by default, multilingual-e5-small-q4) on a free port."""
    port = free_port()
    process = Process(
        [sys.executable, "manage.py", "run_local_node", "--port", str(port), "--ctx", "512", *extra],
        ready="listening on",
    )
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def simulator_process():
    sim = start_simulator()
    yield sim
    sim.process.stop()


@pytest.fixture
def sim(simulator_process) -> Simulator:
    simulator_process.reset()
    return simulator_process


# Hosted-provider stand-ins: the simulator speaking Anthropic's Messages API, and OpenAI's API
# (with a reasoning model, which refuses max_tokens), each behind an API key.
ANTHROPIC_KEY = "sk-ant-sim-0123456789"
OPENAI_KEY = "sk-proj-sim-9876543210"


@pytest.fixture(scope="session")
def anthropic_sim_process():
    sim = start_simulator("--dialect", "anthropic", "--api-key", ANTHROPIC_KEY, "--modalities", "text,image")
    yield sim
    sim.process.stop()


@pytest.fixture
def anthropic_sim(anthropic_sim_process) -> Simulator:
    anthropic_sim_process.reset()
    return anthropic_sim_process


@pytest.fixture(scope="session")
def openai_sim_process():
    sim = start_simulator("--api-key", OPENAI_KEY, "--models", "sim-small,gpt-5-mini")
    yield sim
    sim.process.stop()


@pytest.fixture
def openai_sim(openai_sim_process) -> Simulator:
    openai_sim_process.reset()
    return openai_sim_process


# --- server processes --------------------------------------------------------------


def server_env(**overrides: str) -> dict[str, str]:
    from django.db import connection

    env = dict(os.environ)
    s = connection.settings_dict
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{s['NAME']}"
    env.update(overrides)
    return env


@dataclass
class Server:
    url: str
    process: Process

    @property
    def api(self) -> str:
        return f"{self.url}/v1"


def start_server(**env_overrides: str) -> Server:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--lifespan", "on", "--loop", "uvloop", "--http", "httptools"],
        env=server_env(**env_overrides),
        ready="Application startup complete",
    )
    return Server(url=f"http://127.0.0.1:{port}", process=process)


@pytest.fixture(scope="session")
def live_server_proc(django_db_setup, django_db_blocker):
    server = start_server()
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def second_server_proc(django_db_setup, django_db_blocker):
    server = start_server()
    yield server
    server.process.stop()


@pytest.fixture
def server(live_server_proc, transactional_db) -> Server:
    return live_server_proc


# --- tenants ----------------------------------------------------------------------------


@dataclass
class Tenant:
    user: object
    organization: object
    project: object
    secret_key: str
    publishable_key: str

    @property
    def wallet(self):
        from billing.services import customer_wallet

        return customer_wallet(organization=self.organization)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.secret_key}"}


def make_tenant(name: str, *, credit: int = 1_000_000, origins: list[str] | None = None) -> Tenant:
    from django.contrib.auth import get_user_model

    from billing import services as billing_services
    from console import services
    from console.models import ApiKey

    user = get_user_model().objects.create_user(username=name, email=f"{name}@example.com", password="pw-" + name * 2)
    organization = services.organization_create(name=f"{name}'s org", owner=user)
    project = organization.projects.get()
    if origins:
        services.project_update(project=project, allowed_origins=origins)
    if credit:
        billing_services.wallet_credit(
            wallet=billing_services.customer_wallet(organization=organization), amount=credit, reference=f"seed:{name}"
        )
    _, secret = services.api_key_create(project=project, kind=ApiKey.Kind.SECRET, name="test")
    _, publishable = services.api_key_create(project=project, kind=ApiKey.Kind.PUBLISHABLE, name="test pk")
    return Tenant(user, organization, project, secret, publishable)


@pytest.fixture
def alice(transactional_db) -> Tenant:
    return make_tenant("alice", origins=["https://app.alice.example"])


@pytest.fixture
def bob(alice) -> Tenant:
    from django.contrib.auth import get_user_model

    from console import services
    from console.models import Role

    user = get_user_model().objects.create_user(username="bob", email="bob@example.com", password="pw-bobbob")
    services.membership_add(organization=alice.organization, user=user, role=Role.DEVELOPER)
    return Tenant(user, alice.organization, alice.project, alice.secret_key, alice.publishable_key)


@pytest.fixture
def charlie(transactional_db) -> Tenant:
    return make_tenant("charlie")


@pytest.fixture
def sim_node(transactional_db, sim, allowed_measurement):
    """The simulator registered as a confidential node serving ``sim-small``, priced at SIM_PRICE,
    and attested through the real flow (its evidence checked against the test root)."""
    from billing.services import price_publish
    from nodes.services import node_upsert

    node = node_upsert(
        name="simulator",
        base_url=f"{sim.url}/v1",
        region="test-1",
        attestation="unverified",
        models=[{"model": SIM_MODEL, "context_window": 8192, "max_output_tokens": 256}],
    )
    attest(node)
    price_publish(model=SIM_MODEL, **SIM_PRICE)
    cache_settle()
    node.refresh_from_db()
    return node


def sim_cost(prompt_tokens: int, completion_tokens: int) -> int:
    return prompt_tokens * 1 + completion_tokens * 2


# --- Stripe emulator --------------------------------------------------------------------------------


def _stripe_emulator_port() -> int:
    """A port chosen now, outside the ephemeral range free_port() draws from, so every process
    started later (server fixtures) inherits STRIPE_API_BASE whichever fixture starts first."""
    for offset in range(200):
        port = 20000 + (os.getpid() * 7 + offset) % 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


STRIPE_EMULATOR_PORT = _stripe_emulator_port()
STRIPE_TEST_SECRET_KEY = "sk_test_emulator"
STRIPE_TEST_WEBHOOK_SECRET = "whsec_test_emulator"
os.environ.setdefault("STRIPE_API_BASE", f"http://127.0.0.1:{STRIPE_EMULATOR_PORT}")
os.environ.setdefault("STRIPE_SECRET_KEY", STRIPE_TEST_SECRET_KEY)
os.environ.setdefault("STRIPE_PUBLISHABLE_KEY", "pk_test_emulator")
os.environ.setdefault("STRIPE_WEBHOOK_SECRETS", STRIPE_TEST_WEBHOOK_SECRET)
# Server processes the tests start write their mail (verification, invitations) as files here
# (settings: EMAIL_FILE_PATH → the file-based backend); tests/browser/mailbox.py reads them.
# In-process tests use Django's locmem outbox (mail.outbox) as usual.
TEST_MAIL_DIR = Path(os.environ.setdefault("EMAIL_FILE_PATH", str(ROOT / "var" / f"test-mail-{os.getpid()}")))
if TEST_MAIL_DIR.name == f"test-mail-{os.getpid()}":
    atexit.register(shutil.rmtree, TEST_MAIL_DIR, ignore_errors=True)


@dataclass
class StripeEmulator:
    """Handle on the running emulator (see the ``stripe_emulator`` fixture)."""

    api_base: str
    api_key: str
    webhook_secret: str
    process: Process

    def client(self):
        """A real ``stripe.StripeClient`` pointed at the emulator."""
        import stripe

        return stripe.StripeClient(self.api_key, base_addresses={"api": self.api_base, "files": self.api_base},
                                   max_network_retries=0)

    def admin(self, method: str, path: str, json: dict | None = None, **query) -> dict:
        response = httpx.request(method, f"{self.api_base}/_emulator/{path.lstrip('/')}", json=json,
                                 params={k: v for k, v in query.items() if v is not None}, timeout=30)
        if response.status_code >= 400:
            raise AssertionError(f"emulator {method} {path}: {response.status_code} {response.text}")
        return response.json()

    # webhooks
    def register_webhook(self, url: str, *, secrets: list[str] | None = None,
                         enabled_events: list[str] | None = None) -> dict:
        """Deliver events (all types, or ``enabled_events``) to ``url``, signed with ``secrets``
        (default: the test secret, which STRIPE_WEBHOOK_SECRETS holds in tests)."""
        return self.admin("POST", "webhook_endpoints", {"url": url, "secrets": secrets or [self.webhook_secret],
                                                        "enabled_events": enabled_events})

    def drop_next(self, count: int = 1, *, type: str | None = None) -> None:
        """Drop (record, don't send) the next ``count`` deliveries, of event ``type`` if given."""
        self.admin("POST", "drop", {"count": count, "type": type})

    def deliveries(self, *, type: str | None = None, event_id: str | None = None, status: str | None = None,
                   wait_for: int = 0, timeout: int = 10) -> list[dict]:
        """Deliveries made so far (``status`` delivered/failed/dropped; each has ``payload`` and
        ``signature`` exactly as sent); ``wait_for=N`` blocks server-side until N match."""
        return self.admin("GET", "deliveries", type=type, event_id=event_id, status=status,
                          wait_for=wait_for or None, timeout=timeout)["data"]

    def replay(self, event_id: str, *, endpoint: str | None = None) -> list[dict]:
        """Deliver an event again (to every endpoint, or one), even one that was dropped."""
        return self.admin("POST", f"events/{event_id}/replay", {"endpoint": endpoint})["deliveries"]

    def events(self, *, type: str | None = None) -> list[dict]:
        return self.admin("GET", "events", type=type)["data"]

    def trigger(self, type: str, obj: dict) -> dict:
        """Send any event with ``obj`` as ``data.object``; returns {"events", "deliveries"}."""
        return self.admin("POST", "events", {"type": type, "object": obj})

    # scenarios (each returns after its webhooks were delivered)
    def pay(self, session_url: str, *, outcome: str | None = None, card: str = "visa") -> httpx.Response:
        """Open the hosted Checkout page and press Pay; returns the 303 to success_url (not followed)."""
        page = httpx.get(session_url, params={"outcome": outcome} if outcome else None, timeout=30)
        assert page.status_code == 200, page.text
        return httpx.post(session_url.split("?")[0], data={"outcome": outcome or "", "card": card}, timeout=30)

    def settle_async_payment(self, session_id: str, result: str = "succeeded") -> dict:
        return self.admin("POST", f"checkout/sessions/{session_id}/async_payment", {"result": result})

    def renew_subscription(self, subscription_id: str, *, fail: bool = False) -> dict:
        """Next period's invoice (fee + metered usage so far), paid → invoice.paid; returns {"invoice", …}."""
        return self.admin("POST", f"subscriptions/{subscription_id}/renew", {"fail": fail})

    def open_dispute(self, *, charge: str | None = None, payment_intent: str | None = None,
                     amount: int | None = None, reason: str = "fraudulent") -> dict:
        body = {"charge": charge, "payment_intent": payment_intent, "reason": reason}
        if amount is not None:
            body["amount"] = amount
        return self.admin("POST", "disputes", body)

    def close_dispute(self, dispute_id: str, outcome: str) -> dict:
        return self.admin("POST", f"disputes/{dispute_id}/close", {"outcome": outcome})

    def payout(self, currency: str = "usd") -> dict:
        """Pay out every balance transaction of ``currency`` not yet paid out."""
        return self.admin("POST", "payouts", {"currency": currency})

    def meter_events(self, customer: str | None = None) -> dict:
        """{"data": [...], "totals": {customer: {event_name: sum}}}."""
        return self.admin("GET", "meter_events", customer=customer)

    def reset(self, *, objects: bool = False) -> None:
        """Forget endpoints, drops and deliveries (and every Stripe object with ``objects=True``)."""
        self.admin("POST", "reset", {"objects": objects})


@pytest.fixture(scope="session")
def stripe_emulator():
    """The Stripe emulator (``python -m billing.stripe_emulator``) on 127.0.0.1, once per session.

    It is localstripe (customers, payment methods such as ``pm_card_visa``, payment intents,
    charges, refunds, products, plans, subscriptions, invoices) plus an HTTP-level fake of what
    localstripe lacks, in front of it: Prices, Checkout Sessions with a hosted pay page, billing
    portal sessions, billing meters and meter events, disputes, payouts and balance transactions
    with Stripe's fees, and signed webhook delivery. Tests use the real ``stripe`` library against
    it; nothing of ours is mocked.

    Django settings STRIPE_API_BASE / STRIPE_SECRET_KEY / STRIPE_WEBHOOK_SECRETS point at it (in
    this process, and through the environment in every server process the fixtures start).
    State is shared by the session: call ``reset()`` to forget webhook endpoints and drops.
    """
    from django.test import override_settings

    port = int(os.environ["STRIPE_API_BASE"].rsplit(":", 1)[1])
    process = Process([sys.executable, "-m", "billing.stripe_emulator", "--port", str(port)],
                      ready="stripe emulator listening on", timeout=30)
    emulator = StripeEmulator(api_base=os.environ["STRIPE_API_BASE"], api_key=os.environ["STRIPE_SECRET_KEY"],
                              webhook_secret=os.environ["STRIPE_WEBHOOK_SECRETS"].split(",")[0], process=process)
    overrides = override_settings(STRIPE_API_BASE=emulator.api_base, STRIPE_SECRET_KEY=emulator.api_key,
                                  STRIPE_WEBHOOK_SECRETS=[emulator.webhook_secret])
    overrides.enable()
    yield emulator
    overrides.disable()
    process.stop()


@pytest.fixture
def stripe_emu(stripe_emulator) -> StripeEmulator:
    """``stripe_emulator`` with no webhook endpoint, pending drop or delivery left by an earlier test."""
    stripe_emulator.reset()
    return stripe_emulator
