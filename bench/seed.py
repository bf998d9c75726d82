"""Seed benchmark tenants (funded wallets, keys), the simulator as a node, a price.

Run with the bench's DATABASE_URL; prints the secret keys as JSON.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from billing import services as billing  # noqa: E402
from console import services  # noqa: E402
from nodes.services import node_upsert  # noqa: E402

# One node per model: "url1,url2" "model1,model2" (or one of each).
sim_urls, models = sys.argv[1].split(","), sys.argv[2].split(",")
tenants = int(sys.argv[3]) if len(sys.argv) > 3 else 1
# "plan": every bench organization is on a plan that lists the model and has limits above the load,
# so each request also goes through the plan's model check and limits (--plan).
plan = None
if len(sys.argv) > 4 and sys.argv[4] == "plan":
    from billing.models import Plan

    plan = Plan.objects.create(code="bench", name="Bench", monthly_fee=0, allowed_models=models,
                               rpm_limit=10_000_000, tpm_limit=2_000_000_000)
for i, (sim_url, model) in enumerate(zip(sim_urls, models, strict=True)):
    node_upsert(name=f"sim{i or ''}", base_url=f"{sim_url}/v1", models=[{"model": model, "max_output_tokens": 4096}])
    billing.price_publish(model=model, input_per_mtok=150_000, output_per_mtok=600_000)
keys = []
for i in range(tenants):
    user = get_user_model().objects.create_user(username=f"bench{i}", email=f"bench{i}@example.com")
    org = services.organization_create(name=f"bench {i}", owner=user)
    project = org.projects.get()
    # The bench's upstream is a plain (unattested) process: the bench projects opt in to non-confidential nodes.
    services.project_update(project=project, rpm_limit=10_000_000, tpm_limit=10**12, allow_non_confidential=True)
    billing.wallet_credit(wallet=billing.customer_wallet(organization=org), amount=10**15, reference=f"bench{i}")
    if os.environ.get("BENCH_STORE_BODIES"):  # "days" or "forever": every request also keeps its bodies, encrypted
        services.project_body_storage_set(project=project, store_bodies=os.environ["BENCH_STORE_BODIES"], body_retention_days=30)
    if plan is not None:
        from billing.plans import account_plan_set

        account_plan_set(account=org.billing_account, plan=plan)
    keys.append(services.api_key_create(project=project, kind="secret")[1])
print(json.dumps({"keys": keys}))
