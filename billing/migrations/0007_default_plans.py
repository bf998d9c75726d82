"""The default plans: Free, Developer, Team.

Amounts are micro-units (1 USD = 1,000,000). Free is not a Stripe subscription:
it is where an organization lands when its subscription ends (no fee, no
included credit, no credit line, the local models only, low limits). The paid
plans include their fee's worth of usage credit (Team a bit more) each paid
period and let usage run past the balance on a credit line, billed as metered
overage. An organization with no plan at all (``plan`` null: every existing
one, and new ones until they subscribe) has no plan limits.

The values are written here, not imported, so the migration stays what it was
when it ran. Rerunning it (or editing a plan in the admin first) is safe: rows
are matched by code and only created when missing.
"""
from django.db import migrations

PLANS = [
    {
        "code": "free",
        "name": "Free",
        "monthly_fee": 0,
        "included_credit": 0,
        "overage_enabled": False,
        "overage_limit": 0,
        "rpm_limit": 20,
        "tpm_limit": 40_000,
        # The built-in local node's chat and embedding models.
        "allowed_models": ["smollm2-135m-instruct", "multilingual-e5-small-q4", "all-minilm-l6-v2"],
        "sort": 0,
    },
    {
        "code": "developer",
        "name": "Developer",
        "monthly_fee": 20_000_000,
        "included_credit": 20_000_000,
        "overage_enabled": True,
        "overage_limit": 100_000_000,
        "rpm_limit": 600,
        "tpm_limit": 1_000_000,
        "allowed_models": [],
        "sort": 1,
    },
    {
        "code": "team",
        "name": "Team",
        "monthly_fee": 100_000_000,
        "included_credit": 120_000_000,
        "overage_enabled": True,
        "overage_limit": 1_000_000_000,
        "rpm_limit": 3_000,
        "tpm_limit": 10_000_000,
        "allowed_models": [],
        "sort": 2,
    },
]


def seed_plans(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for values in PLANS:
        Plan.objects.get_or_create(code=values["code"], defaults={**values, "currency": "usd", "active": True})


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0006_auto_recharge"),
    ]

    operations = [
        migrations.RunPython(seed_plans, migrations.RunPython.noop),
    ]
