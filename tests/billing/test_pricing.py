import datetime as dt
import random

import pytest

from billing.pricing import Price, Usage, cost_micros, price_at, reservation_micros

PRICE = Price(1, "m", 1, "usd", input_per_mtok=150_000, cached_input_per_mtok=75_000, output_per_mtok=600_000,
              effective_from=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def test_cost_is_exact_integer_floor_in_customers_favour():
    # 1000 in * 0.15 + 200 cached * 0.075 ... all in micro-units per 1M tokens
    usage = Usage(input_tokens=1200, cached_input_tokens=200, output_tokens=333)
    exact_numerator = 1000 * 150_000 + 200 * 75_000 + 333 * 600_000
    assert cost_micros(PRICE, usage) == exact_numerator // 1_000_000 == 364
    assert isinstance(cost_micros(PRICE, usage), int)


def test_reservation_rounds_up_and_always_covers_cost():
    rng = random.Random(7)
    for _ in range(2000):
        max_in, max_out = rng.randint(1, 200_000), rng.randint(1, 8_000)
        reserved = reservation_micros(PRICE, max_input_tokens=max_in, max_output_tokens=max_out)
        used_in = rng.randint(0, max_in)
        usage = Usage(input_tokens=used_in, cached_input_tokens=rng.randint(0, used_in), output_tokens=rng.randint(0, max_out))
        assert cost_micros(PRICE, usage) <= reserved
    assert reservation_micros(PRICE, max_input_tokens=1, max_output_tokens=0) == 1  # 0.15 rounds up


def test_usage_rejects_impossible_counts():
    with pytest.raises(ValueError):
        Usage(input_tokens=1, output_tokens=-1)
    with pytest.raises(ValueError):
        Usage(input_tokens=1, output_tokens=0, cached_input_tokens=2)


def test_price_in_force_is_the_latest_effective_version():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    v1 = Price(1, "m", 1, "usd", 1, 1, 1, t0)
    v2 = Price(2, "m", 2, "usd", 2, 2, 2, t0 + dt.timedelta(days=10))
    assert price_at([v1, v2], t0 - dt.timedelta(seconds=1)) is None
    assert price_at([v1, v2], t0 + dt.timedelta(days=9)) == v1
    assert price_at([v1, v2], t0 + dt.timedelta(days=10)) == v2
