"""The `pi` command run as a real process against the live server: login → env export → chat (streamed)
→ keys list/create/revoke, usage, models, nodes, --json everywhere; the saved login is mode 0600."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from console.models import ApiKey
from gateway.models import RequestRecord
from tests.conftest import SIM_MODEL

PI = str(Path(sys.executable).parent / "pi")


@pytest.fixture
def pi(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PI_API_KEY", "OPENAI_API_KEY", "PI_BASE_URL", "OPENAI_BASE_URL")}
    env["PI_CONFIG_DIR"] = str(tmp_path / "pi-config")

    def run(*args, input=None, check=True, extra_env=None):
        result = subprocess.run([PI, *args], check=False, input=input, capture_output=True, text=True, timeout=60,
                                env={**env, **(extra_env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"pi {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    run.config = tmp_path / "pi-config" / "config.json"
    run.env = env
    return run


def test_login_env_export_chat_and_keys(pi, server, alice, sim_node, sim):
    # login: the key on stdin (never on the command line), checked against the server before it is saved
    out = pi("login", "--base-url", server.url, input=alice.secret_key + "\n")
    assert "Logged in" in out.stdout
    assert stat.S_IMODE(pi.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(pi.config.parent.stat().st_mode) == 0o700
    assert json.loads(pi.config.read_text()) == {"base_url": server.url, "api_key": alice.secret_key}

    # env export openai: lines a shell can eval, which the official openai SDK then uses unchanged
    exported = pi("env", "export", "openai").stdout.splitlines()
    assert exported == [f"export OPENAI_BASE_URL={server.url}/v1", f"export OPENAI_API_KEY={alice.secret_key}"]
    script = ('eval "$1"; exec "$2" -c "import openai; c = openai.OpenAI(max_retries=0); '
              "print(c.chat.completions.create(model='sim-small', max_tokens=9, "
              "messages=[{'role': 'user', 'content': 'echo: via openai'}]).choices[0].message.content)\"")
    shell = subprocess.run(["bash", "-c", script, "bash", "\n".join(exported), sys.executable], check=False, capture_output=True,
                           text=True, timeout=60, env=pi.env)
    assert shell.stdout.strip() == "via openai", shell.stderr

    # chat, streamed, two turns from stdin (the second sees the first in its history)
    chat = pi("chat", "--model", SIM_MODEL, "--max-tokens", "20", input="echo: one two three\necho: four five\n")
    assert chat.stdout.splitlines() == ["one two three", "four five"]
    records = list(RequestRecord.objects.filter(endpoint="chat.completions").order_by("id"))
    assert len(records) == 3 and all(r.stream for r in records[1:])
    second, first = sim.stats()["last"][:2]  # most recent first
    assert second["prompt_tokens"] > first["prompt_tokens"] + 3  # the second turn carried the first along

    chat_json = pi("chat", "-M", SIM_MODEL, "-m", "echo: json please", "--json")
    answer = json.loads(chat_json.stdout)
    assert answer["content"] == "json please" and answer["request_id"].startswith("req_")

    # keys: create (shown once), list, revoke — and the revoked key is refused
    created = json.loads(pi("keys", "create", "--name", "cli key", "--scope", "models", "--json").stdout)
    assert created["key"].startswith("sk_live_") and created["scopes"] == ["models"]
    listed = json.loads(pi("keys", "list", "--json").stdout)
    assert created["id"] in [k["id"] for k in listed["data"]]
    table = pi("keys", "list").stdout
    assert created["id"] in table and "cli key" in table and created["key"] not in table
    assert pi("models", "--api-key", created["key"]).returncode == 0
    revoked = pi("keys", "revoke", created["id"])
    assert f"Revoked {created['id']}" in revoked.stdout
    assert ApiKey.objects.get(public_id=created["id"]).status == "revoked"
    refused = pi("models", "--api-key", created["key"], "--json", check=False)
    assert refused.returncode == 2 and json.loads(refused.stderr)["error"]["code"] == "invalid_api_key"


def test_usage_models_nodes_json_and_tables(pi, server, alice, sim_node):
    pi("login", "--base-url", server.url, "--api-key", alice.secret_key)
    usage = json.loads(pi("usage", "--json").stdout)
    assert usage["balance_micros"] == alice.wallet.balance == 1_000_000
    assert "1.000000 USD" in pi("usage").stdout
    models = json.loads(pi("--json", "models").stdout)  # --json before the command works too
    assert SIM_MODEL in [m["id"] for m in models["data"]]
    assert SIM_MODEL in pi("models").stdout
    nodes = json.loads(pi("nodes", "--json").stdout)
    [node] = nodes["data"]
    assert node["attestation"] == "verified" and node["id"] in pi("nodes").stdout
    # verify the node's attestation here, against the tests' root (as a customer would, with the root file)
    from django.conf import settings

    verified = json.loads(pi("nodes", "--verify", node["id"], "--trust-root", settings.ATTESTATION_TRUST_ROOTS[0], "--json").stdout)
    assert verified["verified"] is True and verified["encryption_key"] == node["public_keys"]["encryption"]


def test_env_key_http_refusal_and_errors(pi, server, alice, sim_node, tmp_path):
    # no login: the key from the environment
    out = pi("models", "--json", extra_env={"PI_API_KEY": alice.secret_key, "PI_BASE_URL": server.url})
    assert json.loads(out.stdout)["object"] == "list"
    refused = pi("models", "--base-url", "http://example.invalid", "--api-key", "k", check=False)
    assert refused.returncode == 1 and "Refusing plain http" in refused.stderr
    missing = pi("usage", check=False)
    assert missing.returncode == 2 and "No API key" in missing.stderr
    wrong = pi("login", "--base-url", server.url, "--api-key", "sk_live_nope", check=False)
    assert wrong.returncode == 2 and not pi.config.exists()  # nothing saved for a key the server refused
    pi("login", "--base-url", server.url, "--api-key", alice.secret_key)
    assert pi.config.exists()
    pi("logout")
    assert not pi.config.exists()


def test_keypair_create_and_show(pi, tmp_path):
    path = tmp_path / "keys" / "client.pem"
    created = json.loads(pi("keypair", "create", str(path), "--json", extra_env={"PI_KEY_PASSWORD": "s3cret"}).stdout)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    shown = json.loads(pi("keypair", "show", str(path), "--json", extra_env={"PI_KEY_PASSWORD": "s3cret"}).stdout)
    assert shown["public_key"] == created["public_key"]
    wrong = pi("keypair", "show", str(path), extra_env={"PI_KEY_PASSWORD": "nope"}, check=False)
    assert wrong.returncode == 3 and "Cannot load the key pair" in wrong.stderr
    again = pi("keypair", "create", str(path), extra_env={"PI_KEY_PASSWORD": "x"}, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
