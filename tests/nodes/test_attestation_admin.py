"""Operators and admins: the test/dev CA command, the measurement allow-list (admin and command),
and the node admin, which can mark a node confidential but never verified."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import ROOT, SIM_MEASUREMENT, start_simulator


@pytest.fixture
def admin_client(transactional_db, django_user_model):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-rootroot"))
    return client


def test_attestation_ca_makes_a_root_and_node_certificates_a_simulator_attests_with(tmp_path, settings, transactional_db):
    from nodes.attestation.services import measurement_allow, node_attest
    from nodes.services import node_upsert

    run = [sys.executable, "manage.py", "attestation_ca"]
    made = subprocess.run([*run, "init", "--dir", str(tmp_path), "--algorithm", "p256"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert f"ATTESTATION_TRUST_ROOTS={tmp_path / 'root.pem'}" in made.stdout
    assert (tmp_path / "root.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*run, "init", "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "--force" in again.stderr  # a root is never overwritten by accident
    issued = subprocess.run([*run, "issue", "--dir", str(tmp_path), "--node", "gpu-7"], cwd=ROOT, capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr

    settings.ATTESTATION_TRUST_ROOTS = [str(tmp_path / "root.pem")]
    node_sim = start_simulator(
        "--attestation-key", str(tmp_path / "gpu-7.key"), "--attestation-certs", str(tmp_path / "gpu-7.pem"),
        "--attestation-measurement", SIM_MEASUREMENT, attestation=None,
    )
    try:
        measurement_allow(value=SIM_MEASUREMENT)
        node = node_upsert(name="gpu-7", base_url=f"{node_sim.url}/v1", attestation="unverified", models=[{"model": "m"}])
        assert node_attest(node=node).result == "verified"
    finally:
        node_sim.process.stop()


def test_attestation_ca_issue_needs_a_root(tmp_path):
    with pytest.raises(CommandError, match="attestation_ca init"):
        call_command("attestation_ca", "issue", "--dir", str(tmp_path), "--node", "n")
    with pytest.raises(CommandError, match="--node"):
        call_command("attestation_ca", "init", "--dir", str(tmp_path))
        call_command("attestation_ca", "issue", "--dir", str(tmp_path), "--node", "../escape")


def test_the_allow_list_command(transactional_db, capsys):
    from nodes.models import AllowedMeasurement

    call_command("attestation_measurement", "allow", SIM_MEASUREMENT.upper(), "--description", "v1.2")
    assert AllowedMeasurement.objects.get().value == SIM_MEASUREMENT
    call_command("attestation_measurement", "revoke", SIM_MEASUREMENT)
    assert not AllowedMeasurement.objects.get().active
    call_command("attestation_measurement", "list")
    assert f"{SIM_MEASUREMENT} revoked v1.2" in capsys.readouterr().out
    with pytest.raises(CommandError, match="hex digest"):
        call_command("attestation_measurement", "allow", "not-hex")


def test_measurements_are_added_in_the_admin_normalized_and_revoked_with_their_nodes(admin_client, sim_node):
    from nodes.models import AllowedMeasurement, Node

    other = "AB" * 32
    response = admin_client.post("/admin/nodes/allowedmeasurement/add/", {"value": f" {other} ", "description": "next"})
    assert response.status_code == 302
    assert AllowedMeasurement.objects.filter(value=other.lower(), active=True).exists()
    bad = admin_client.post("/admin/nodes/allowedmeasurement/add/", {"value": "xyz", "description": ""})
    assert bad.status_code == 200 and "hex digest" in bad.content.decode()

    current = AllowedMeasurement.objects.get(value=SIM_MEASUREMENT)
    admin_client.post("/admin/nodes/allowedmeasurement/", {"action": "revoke", "_selected_action": [current.id]})
    assert Node.objects.get(id=sim_node.id).attestation == "unverified"


def test_the_node_admin_never_sets_verified_and_a_changed_address_must_attest_again(admin_client, sim_node, sim):
    from nodes.models import Attestation, Node

    def finished(count: int) -> Attestation:  # the admin queues attestations on daemon threads (eager Celery)
        return wait_for(lambda: Attestation.objects.exclude(result="pending").count() >= count
                        and Attestation.objects.exclude(result="pending").order_by("-id").first())

    url = f"/admin/nodes/node/{sim_node.id}/change/"
    form = {
        "name": sim_node.name, "base_url": sim_node.base_url, "adapter": "openai", "region": "test-1", "hardware": "",
        "gpus": 0, "status": "active", "attestation": "verified", "operator": "",
        "models-TOTAL_FORMS": 0, "models-INITIAL_FORMS": 0, "models-MIN_NUM_FORMS": 0, "models-MAX_NUM_FORMS": 1000,
        "members-TOTAL_FORMS": 0, "members-INITIAL_FORMS": 0,
    }
    assert admin_client.post(url, form).status_code == 302  # unchanged: it keeps the state it earned
    assert Node.objects.get(id=sim_node.id).attestation == "verified"

    assert admin_client.post(url, {**form, "base_url": "http://127.0.0.1:9/v1"}).status_code == 302
    assert Node.objects.get(id=sim_node.id).attestation == "unverified"  # at once: another address, maybe another machine
    assert finished(2).reason == "node_error"
    refused = admin_client.post(url, {**form, "base_url": "http://127.0.0.1:9/v1"})
    assert refused.status_code == 200 and "only by passing attestation" in refused.content.decode()

    assert admin_client.post(url, {**form, "attestation": "unverified"}).status_code == 302  # back home
    assert finished(3).result == "verified" and Node.objects.get(id=sim_node.id).attestation == "verified"
    admin_client.post("/admin/nodes/node/", {"action": "attest_now", "_selected_action": [sim_node.id]})
    assert finished(4).result == "verified" and sim.stats()["attestations"] == 3

    page = admin_client.get(f"/admin/nodes/attestation/{finished(4).id}/change/")
    assert page.status_code == 200 and SIM_MEASUREMENT in page.content.decode()
    assert admin_client.get("/admin/nodes/attestation/add/").status_code == 403


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
