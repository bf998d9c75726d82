"""Seed (or find) the demo tenant and print how to use it.

Idempotent: the user, organization, project, price, local node and the seed
credit are created once; the demo keys' plaintext is kept in
``STATE_DIR/demo_credentials.json`` (mode 600) so later runs can print the
same keys, and new keys are issued only if those stopped working.
"""
from __future__ import annotations

import json
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import ModelPrice
from console import keys, services
from console.models import ApiKey, Organization, Project
from nodes import services as node_services
from nodes.nodeserver.embedders import MAX_REQUEST_TOKENS, embedding_model

EMAIL = "demo@example.com"
ORG_NAME = "Demo Organization"
PROJECT_NAME = "Demo Project"
SEED_CREDIT_MICROS = 10_000_000  # 10 USD
# SmolLM2-135M: 0.10 USD per 1M input tokens, 0.20 USD per 1M output tokens.
LOCAL_PRICE = {"input_per_mtok": 100_000, "cached_input_per_mtok": 50_000, "output_per_mtok": 200_000}
# The local embedding model (multilingual-e5-small-q4 by default): 0.02 USD per 1M input tokens; no output.
EMBEDDING_PRICE = {"input_per_mtok": 20_000, "cached_input_per_mtok": 20_000, "output_per_mtok": 0}


class Command(BaseCommand):
    help = "Create the demo organization, project, keys, wallet and local node (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the credentials as JSON")

    def handle(self, *args, **options):
        path = settings.STATE_DIR / "demo_credentials.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        with transaction.atomic():
            result = self._bootstrap(saved)
        settings.STATE_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: result[k] for k in ("password", "secret_key", "publishable_key")}))
        path.chmod(0o600)
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for name, value in result.items():
                self.stdout.write(f"{name:>16}: {value}")

    def _bootstrap(self, saved: dict) -> dict:
        User = get_user_model()
        password = saved.get("password") or secrets.token_urlsafe(12)
        user = User.objects.filter(email=EMAIL).first()
        if user is None:
            user = User.objects.create_user(username="demo", email=EMAIL, password=password)
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        self._verify_email(user)

        organization = Organization.objects.filter(name=ORG_NAME, memberships__user=user).first()
        if organization is None:
            organization = services.organization_create(name=ORG_NAME, owner=user, project_name=PROJECT_NAME)
        project = Project.objects.get(organization=organization, name=PROJECT_NAME)
        origin = settings.PUBLIC_BASE_URL.rstrip("/")
        if origin not in project.allowed_origins:
            services.project_update(project=project, allowed_origins=[*project.allowed_origins, origin])
        if settings.LOCAL_NODE_ENABLED and not project.allow_non_confidential:
            # The built-in local node is a plain process on this machine, with no attestation:
            # the demo project opts in to non-confidential nodes so it can use it.
            services.project_update(project=project, allow_non_confidential=True)

        wallet = billing_services.customer_wallet(organization=organization)
        billing_services.wallet_credit(
            wallet=wallet, amount=SEED_CREDIT_MICROS, reference=f"demo-seed:{organization.public_id}",
            description="Demo credit",
        )
        if settings.LOCAL_NODE_ENABLED:
            self._local_node()

        secret_key = self._working_key(project, ApiKey.Kind.SECRET, saved.get("secret_key"), user)
        publishable_key = self._working_key(project, ApiKey.Kind.PUBLISHABLE, saved.get("publishable_key"), user)
        balance = billing_selectors.balance_for_organization(organization_id=organization.id)
        return {
            "console_url": f"{settings.PUBLIC_BASE_URL.rstrip('/')}/console/",
            "api_base_url": f"{settings.PUBLIC_BASE_URL.rstrip('/')}/v1",
            "email": EMAIL,
            "password": password,
            "organization": organization.public_id,
            "project": project.public_id,
            "secret_key": secret_key,
            "publishable_key": publishable_key,
            "balance_micros": balance.balance,
        }

    def _verify_email(self, user) -> None:
        from allauth.account.models import EmailAddress

        EmailAddress.objects.update_or_create(
            user=user, email=EMAIL, defaults={"verified": True, "primary": True}
        )

    def _local_node(self) -> None:
        model = settings.LOCAL_NODE_MODEL
        models = [{"model": model, "context_window": 2048, "max_output_tokens": 512}]
        prices = {model: LOCAL_PRICE}
        if embedder := embedding_model(settings.LOCAL_NODE_EMBEDDINGS):
            # The window bounds a whole request (the gateway reserves for at most that many input
            # tokens); an embedding model writes no output tokens.
            models.append({"model": embedder, "context_window": MAX_REQUEST_TOKENS, "max_output_tokens": 0})
            prices[embedder] = EMBEDDING_PRICE
        node_services.node_upsert(
            public_id="node_local",
            name="Built-in local node (SmolLM2-135M, llama.cpp; embeddings)",
            base_url=f"http://127.0.0.1:{settings.LOCAL_NODE_PORT}/v1",
            region="local",
            hardware="CPU",
            models=models,
        )
        for name, price in prices.items():
            if not ModelPrice.objects.filter(model=name).exists():
                billing_services.price_publish(model=name, **price)

    def _working_key(self, project: Project, kind: str, plaintext: str | None, user) -> str:
        if plaintext:
            parsed = keys.parse(plaintext)
            key = ApiKey.objects.filter(project=project, lookup=parsed.lookup if parsed else None).first()
            if key and key.status == ApiKey.Status.ACTIVE and key.expires_at is None and keys.matches(plaintext, key.hash):
                return plaintext
        _, plaintext = services.api_key_create(project=project, kind=kind, name=f"demo {kind}", created_by=user)
        return plaintext
