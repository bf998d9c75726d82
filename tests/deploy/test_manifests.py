"""The deployment files agree with the code: they parse, name only settings the platform reads (the
ones in deploy/platform.env.example), set every required one, probe paths the server answers, and
nginx accepts its configurations."""
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml

from config import ops

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CODE_DIRS = ("config", "gateway", "billing", "console", "nodes")


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def example_names() -> tuple[set[str], set[str]]:
    """(every name in platform.env.example, set or commented out; the ones set, i.e. required)."""
    every, required = set(), set()
    for line in (DEPLOY / "platform.env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]+)=", line)
        if match:
            every.add(match.group(2))
            if not match.group(1):
                required.add(match.group(2))
    return every, required


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def containers() -> list[dict]:
    out = []
    for doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        out += spec.get("containers", [])
    return out


def test_every_manifest_parses_and_kustomization_lists_files_that_exist():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    kinds = sorted(doc["kind"] for doc in k8s_docs())
    assert kinds == sorted(["Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service", "Deployment",
                            "Deployment", "Ingress", "PodDisruptionBudget", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler"])
    if shutil.which("kubectl"):  # kustomize build, offline
        built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
        assert all(doc["metadata"].get("namespace", "private-inference") == "private-inference"
                   for doc in yaml.safe_load_all(built) if doc)
    assert set(compose()["services"]) == {"postgres", "redis", "migrate", "web1", "web2", "worker", "beat", "nginx"}


def test_the_example_names_only_settings_the_code_reads():
    every, _ = example_names()
    code = "".join(path.read_text() for d in CODE_DIRS for path in (ROOT / d).rglob("*.py"))
    unread = sorted(name for name in every if f'"{name}"' not in code)
    assert unread == []


def test_manifests_and_compose_set_only_known_settings_and_every_required_one():
    every, required = example_names()
    docs = k8s_docs()
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    k8s_names = set(config["data"]) | set(secret["stringData"])
    for container in containers():
        k8s_names |= {entry["name"] for entry in container.get("env", [])}
    assert sorted(k8s_names - every) == []
    assert sorted(required - k8s_names) == []

    services = compose()["services"]
    compose_names = set()
    for service in services.values():
        compose_names |= set(service.get("environment") or {})
    assert sorted(compose_names - every - {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}) == []
    platform = [s for name, s in services.items() if name not in ("postgres", "redis", "nginx")]
    assert all(s["env_file"] == "platform.env" for s in platform)  # the rest comes from the example's copy


def test_probe_paths_exist_on_a_real_server(server):
    paths = set()
    for container in containers():
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "httpGet" in container.get(probe, {}):
                paths.add(container[probe]["httpGet"]["path"])
    for service in compose()["services"].values():
        test = " ".join((service.get("healthcheck") or {}).get("test", []))
        paths |= set(re.findall(r"127\.0\.0\.1:8000(/\w+)", test))
    paths |= set(re.findall(r"127\.0\.0\.1:8000(/\w+)", (DEPLOY / "Dockerfile").read_text()))
    assert paths == {"/healthz", "/readyz"} and paths <= ops.PATHS
    for path in paths:
        assert httpx.get(f"{server.url}{path}").status_code == 200, path


def test_web_pods_get_time_to_drain():
    [web] = [d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "platform-web"]
    spec = web["spec"]["template"]["spec"]
    [config] = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    pre_stop = int(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    budget = pre_stop + int(config["data"]["SHUTDOWN_READY_DELAY_SECONDS"]) + 2 * int(config["data"]["SHUTDOWN_DRAIN_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > budget
    assert spec["containers"][0]["command"][:3] == ["python", "-m", "config.server"]
    [beat] = [d for d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "platform-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def test_nginx_accepts_the_production_and_compose_sites(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem"], check=True, capture_output=True)
    locations = (DEPLOY / "nginx" / "platform-locations.conf").resolve()
    for site in (DEPLOY / "nginx" / "platform.conf", DEPLOY / "compose" / "nginx.conf"):
        text = site.read_text()
        text = re.sub(r"ssl_certificate (\S+);", f"ssl_certificate {tmp_path}/cert.pem;", text)
        text = re.sub(r"ssl_certificate_key (\S+);", f"ssl_certificate_key {tmp_path}/key.pem;", text)
        text = text.replace("/etc/nginx/platform-locations.conf", str(locations))
        text = re.sub(r"server web(\d):8000", r"server 127.0.0.1:800\1", text)  # compose service names
        text = re.sub(r"listen (80|443)\b", r"listen 127.0.0.1:1\1", text)  # not privileged, never bound by -t
        (tmp_path / "site.conf").write_text(text)
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
            f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
        )
        result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                 "-e", str(tmp_path / "error.log")], capture_output=True, text=True, check=False)
        assert result.returncode == 0, (site.name, result.stderr)
