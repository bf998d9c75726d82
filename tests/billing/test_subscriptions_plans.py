"""Plans: the default plans of migration 0006, and their Stripe side (product, monthly fee
price, metered overage price on the billing meter) made by ``plans_sync_to_stripe`` /
``manage.py stripe_sync_plans`` in the emulator, idempotently."""
from __future__ import annotations

import importlib
import io
from decimal import Decimal

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import CommandError, call_command

from billing import plans
from billing.models import Plan
from billing.stripe_client import client
from tests.billing.subscription_kit import plans_in_db


def test_migration_0006_seeds_free_developer_and_team_and_is_rerunnable(transactional_db):
    Plan.objects.all().delete()  # emptied between transactional tests anyway; the migration's own rows
    seed = importlib.import_module("billing.migrations.0007_default_plans").seed_plans
    seed(apps, None)
    seed(apps, None)  # again: nothing new, nothing changed
    seeded = {p.code: p for p in Plan.objects.all()}
    assert list(seeded) == ["free", "developer", "team"]  # by sort
    free, developer, team = seeded["free"], seeded["developer"], seeded["team"]
    assert (free.monthly_fee, free.included_credit, free.overage_enabled, free.overage_limit) == (0, 0, False, 0)
    assert free.allowed_models == [settings.LOCAL_NODE_MODEL, "multilingual-e5-small-q4", "all-minilm-l6-v2"]
    for paid in (developer, team):
        assert paid.monthly_fee % 10_000 == 0 and paid.included_credit > 0  # whole cents, credit included
        assert paid.overage_enabled and paid.overage_limit > 0 and paid.allowed_models == []
    assert free.rpm_limit < developer.rpm_limit < team.rpm_limit
    assert free.tpm_limit < developer.tpm_limit < team.tpm_limit


def test_sync_makes_each_paid_plans_product_and_prices_once(stripe_emu, transactional_db):
    plans_in_db()
    first = {r.plan: r for r in plans.plans_sync_to_stripe()}
    assert first["free"].skipped and not first["free"].price
    stripe = client()
    meter = plans.meter_ensure(stripe)
    assert stripe.v1.billing.meters.retrieve(meter).event_name == settings.STRIPE_METER_EVENT_NAME
    for plan in Plan.objects.exclude(code="free"):
        product = stripe.v1.products.retrieve(plan.stripe_product_id)
        fee = stripe.v1.prices.retrieve(plan.stripe_price_id).to_dict()
        overage = stripe.v1.prices.retrieve(plan.stripe_meter_price_id).to_dict()
        assert product.name == plan.name and fee["product"] == overage["product"] == product.id
        assert fee["unit_amount"] * 10_000 == plan.monthly_fee and fee["currency"] == "usd"
        assert fee["recurring"]["interval"] == "month" and fee["recurring"]["usage_type"] == "licensed"
        assert Decimal(overage["unit_amount_decimal"]) == Decimal("0.0001")  # a cent per 10,000 micro-units
        assert overage["recurring"]["usage_type"] == "metered" and overage["recurring"]["meter"] == meter
        assert (first[plan.code].product, first[plan.code].price) == (product.id, fee["id"])

    again = plans.plans_sync_to_stripe()
    assert [r.created for r in again] == [[], [], []]
    assert [(r.product, r.price, r.meter_price) for r in again] == [
        (r.product, r.price, r.meter_price) for r in first.values()]


def test_a_fee_change_makes_a_new_price_and_archives_the_old(stripe_emu, transactional_db):
    pro = Plan.objects.create(code="pro-sync", name="Pro", monthly_fee=30_000_000, included_credit=1,
                              overage_enabled=True, overage_limit=1)
    plans.plans_sync_to_stripe()
    pro.refresh_from_db()
    old_fee, old_overage = pro.stripe_price_id, pro.stripe_meter_price_id
    pro.monthly_fee = 35_000_000
    pro.overage_enabled = False
    pro.save()
    (result,) = [r for r in plans.plans_sync_to_stripe() if r.plan == "pro-sync"]
    pro.refresh_from_db()
    assert pro.stripe_price_id != old_fee and result.created == [pro.stripe_price_id]
    assert pro.stripe_meter_price_id == ""
    stripe = client()
    assert stripe.v1.prices.retrieve(pro.stripe_price_id).unit_amount == 3_500
    assert not stripe.v1.prices.retrieve(old_fee).active and not stripe.v1.prices.retrieve(old_overage).active


def test_the_command_reports_each_plan_and_refuses_a_fee_in_fractions_of_a_cent(stripe_emu, transactional_db):
    plans_in_db()
    out = io.StringIO()
    call_command("stripe_sync_plans", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "free: skipped (no fee: not a Stripe subscription)"
    assert lines[1].startswith("developer: product prod_") and "fee price price_" in lines[1]
    Plan.objects.filter(code="developer").update(monthly_fee=20_000_001)
    with pytest.raises(CommandError, match="not a whole number of cents"):
        call_command("stripe_sync_plans", stdout=io.StringIO())
