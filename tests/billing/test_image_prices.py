"""Per-image prices: a versioned part of a model's price, loaded with the catalog's prices."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from billing.models import ImagePrice
from billing.pricing import Price, Usage, budget_micros, cost_micros, price_at
from billing.selectors import price_version, price_versions
from billing.services import price_publish


@pytest.mark.django_db(transaction=True)
async def test_image_prices_are_versioned_and_loaded_with_the_model_prices():
    from asgiref.sync import sync_to_async

    old = await sync_to_async(price_publish)(
        model="img", input_per_mtok=0, output_per_mtok=0, per_image={"512x512": 10_000, "1024x1024": 40_000},
        effective_from=timezone.now() - dt.timedelta(hours=1),
    )
    await sync_to_async(price_publish)(
        model="img", input_per_mtok=0, output_per_mtok=0, per_image={"512x512": 12_000},
        effective_from=timezone.now() + dt.timedelta(hours=1),
    )
    versions = (await price_versions())["img"]
    assert [p.version for p in versions] == [1, 2]
    now = price_at(versions, timezone.now())
    assert now.image_price("1024x1024") == 40_000 and now.image_price("512x512") == 10_000
    assert now.image_price("1024x1792") is None
    assert price_at(versions, timezone.now() + dt.timedelta(hours=2)).per_image == (("512x512", 12_000),)
    assert await sync_to_async(price_version)(old.id) == now


@pytest.mark.django_db
@pytest.mark.parametrize("per_image", [{"big": 1}, {"512x512": -1}, {"512x512": 1.5}, {"512x512": True}])
def test_bad_image_prices_are_refused(per_image):
    with pytest.raises(ValueError):
        price_publish(model="img", input_per_mtok=0, output_per_mtok=0, per_image=per_image)
    assert not ImagePrice.objects.exists()


def test_a_token_budget_reservation_covers_any_mix_of_input_and_output():
    price = Price(1, "m", 1, "usd", 1_500_000, 700_000, 3_000_001, timezone.now())
    budget = 1000
    held = budget_micros(price, budget)
    assert held == 3001  # 1000 tokens at the dearer (output) price, rounded up
    for output in range(0, budget + 1, 50):
        usage = Usage(input_tokens=budget - output, output_tokens=output, cached_input_tokens=(budget - output) // 2)
        assert cost_micros(price, usage) <= held
