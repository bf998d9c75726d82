import json

from django.core.management import call_command

from billing.invariants import check_ledger
from console import keys
from console.models import ApiKey, Organization


def bootstrap(capsys) -> dict:
    call_command("bootstrap_demo", "--json")
    return json.loads(capsys.readouterr().out)


def test_bootstrap_demo_is_idempotent_and_prints_working_credentials(transactional_db, capsys, settings):
    settings.LOCAL_NODE_ENABLED = True
    first = bootstrap(capsys)
    second = bootstrap(capsys)
    assert first == second
    assert set(first) >= {"console_url", "email", "password", "organization", "project", "secret_key",
                          "publishable_key", "balance_micros"}
    assert first["balance_micros"] == 10_000_000 and check_ledger() == []
    assert Organization.objects.count() == 1 and ApiKey.objects.count() == 2
    for kind in ("secret_key", "publishable_key"):
        key = ApiKey.objects.get(lookup=keys.parse(first[kind]).lookup)
        assert keys.matches(first[kind], key.hash)

    ApiKey.objects.filter(kind="secret").update(status="revoked")
    third = bootstrap(capsys)
    assert third["secret_key"] != first["secret_key"] and third["publishable_key"] == first["publishable_key"]
