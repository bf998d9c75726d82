import math
import re

import pytest

from console import keys, services
from console.models import ApiKey


def test_generated_keys_carry_kind_prefix_entropy_and_checksum():
    secret = keys.generate(keys.SECRET)
    publishable = keys.generate(keys.PUBLISHABLE)
    assert secret.plaintext.startswith("sk_live_") and publishable.plaintext.startswith("pk_live_")
    body = secret.plaintext[len("sk_live_") : -keys.CHECKSUM_CHARS]
    assert re.fullmatch(r"[0-9A-Za-z]{32}", body)
    assert keys.RANDOM_CHARS * math.log2(62) >= 160
    assert keys.parse(secret.plaintext) == keys.ParsedKey(kind=keys.SECRET, lookup=body[:12])
    assert keys.parse(publishable.plaintext).kind == keys.PUBLISHABLE


def test_parse_refuses_typos_truncation_and_foreign_prefixes():
    plaintext = keys.generate(keys.SECRET).plaintext
    i = 20
    typo = plaintext[:i] + ("A" if plaintext[i] != "A" else "B") + plaintext[i + 1 :]
    assert keys.parse(typo) is None
    assert keys.parse(plaintext[:-1]) is None
    assert keys.parse("xk_live_" + plaintext[8:]) is None
    assert keys.parse("") is None


def test_hash_is_keyed_and_compared_in_constant_time():
    new = keys.generate(keys.SECRET)
    assert new.hash != new.plaintext and len(new.hash) == 64
    assert keys.matches(new.plaintext, new.hash)
    assert not keys.matches(keys.generate(keys.SECRET).plaintext, new.hash)


def test_key_is_stored_only_as_hash(alice):
    key = ApiKey.objects.get(project=alice.project, kind=ApiKey.Kind.SECRET)
    stored = {f.attname: getattr(key, f.attname) for f in ApiKey._meta.fields}
    assert all(alice.secret_key not in str(v) for v in stored.values())
    assert key.lookup in alice.secret_key and key.last4 == alice.secret_key[-4:]
    assert key.redacted == f"sk_live_…{alice.secret_key[-4:]}"


def test_rotation_sets_grace_on_old_key_and_links_new_one(alice):
    import datetime as dt

    from django.utils import timezone

    old = ApiKey.objects.get(project=alice.project, kind=ApiKey.Kind.SECRET)
    before = timezone.now()
    new, plaintext = services.api_key_rotate(key=old, grace=dt.timedelta(minutes=5))
    old.refresh_from_db()
    assert new.rotated_from_id == old.id and new.kind == old.kind and plaintext.startswith("sk_live_")
    assert before + dt.timedelta(minutes=5) <= old.expires_at <= timezone.now() + dt.timedelta(minutes=5)
    with pytest.raises(ValueError):
        services.api_key_rotate(key=old, grace=dt.timedelta(days=31))


def test_rotation_keeps_the_keys_limits_and_cap(alice):
    import datetime as dt

    key = ApiKey.objects.get(project=alice.project, kind=ApiKey.Kind.SECRET)
    services.api_key_limits_set(key=key, rpm_limit=7, tpm_limit=7_000)
    services.api_key_spend_cap_set(key=key, monthly_spend_cap=70)
    new, _ = services.api_key_rotate(key=key, grace=dt.timedelta(0))
    assert (new.rpm_limit, new.tpm_limit, new.monthly_spend_cap) == (7, 7_000, 70)


def test_limit_and_cap_services_refuse_nonsense(alice):
    key = ApiKey.objects.get(project=alice.project, kind=ApiKey.Kind.SECRET)
    for kwargs in ({"rpm_limit": 0, "tpm_limit": None}, {"rpm_limit": None, "tpm_limit": 1.5}):
        with pytest.raises(ValueError):
            services.api_key_limits_set(key=key, **kwargs)
    with pytest.raises(ValueError):
        services.api_key_spend_cap_set(key=key, monthly_spend_cap=-1)
    with pytest.raises(ValueError):
        services.project_update(project=alice.project, monthly_spend_cap=-1)
    key.refresh_from_db()
    alice.project.refresh_from_db()
    assert (key.rpm_limit, key.monthly_spend_cap, alice.project.monthly_spend_cap) == (None, None, None)


def test_project_update_sets_a_spend_cap_and_publishes_the_change(alice, monkeypatch):
    from django.test import TestCase

    from billing.models import SpendCounter
    from config import bus

    published = []
    monkeypatch.setattr(bus, "publish", lambda topic, value: published.append((topic, value)))
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.project_update(project=alice.project, monthly_spend_cap=5_000)
    assert SpendCounter.objects.get(scope="project", scope_id=alice.project.id).cap == 5_000
    assert (services.PROJECT_TOPIC, str(alice.project.id)) in published
