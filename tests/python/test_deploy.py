"""Deployment files against the binary they deploy: the Kubernetes manifests as kustomize
renders them, the container's config and entrypoint, and the Compose file.

No container engine runs here, so the image is not built; what the image runs is: the
Dockerfile's ENTRYPOINT command line, unchanged except for the binary's directory, with the
config the image ships, against the mock Claude API and a real `redis-server`. The manifests'
probes, ports and paths are checked against the config they mount and the proxy's real
admin routes, and every config file the manifests and Compose mount passes `config check`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

import smtest
from smtest import API_KEY, AWS_KEY_ID, PROXY_BIN, REPO, free_ports, user_request, wait_until

DEPLOY = REPO / "deploy"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
IMAGE_CONFIG = DEPLOY / "docker" / "streammask.toml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the Kubernetes manifests are not rendered (apt install kubectl, or a release binary)")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)}"
    return found[0]


def entrypoint() -> list[str]:
    line = next(l for l in DOCKERFILE.read_text().splitlines() if l.startswith("ENTRYPOINT "))
    return json.loads(line.removeprefix("ENTRYPOINT "))


# What the streammask-secrets Secret (Kubernetes) and the Compose environment provide.
SECRET_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-upstream-key-for-the-mock",
    "STREAMMASK_PLACEHOLDER_KEY": smtest.PLACEHOLDER_KEY,
    "STREAMMASK_REDIS_URL": "redis://127.0.0.1:6379/0",
}


def config_check(path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMMASK_")} | SECRET_ENV
    return subprocess.run([str(PROXY_BIN), "config", "check", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_manifests_render_with_every_object_the_platform_needs(rendered):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                            "PodDisruptionBudget", "PodMonitor", "Service"])
    deployment = one(rendered, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Every selector picks streammask's pods, and only the NetworkPolicy's peers pick others.
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        assert one(rendered, kind)["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert one(rendered, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    peers = [p for rule in policy["egress"] for p in rule.get("to", []) if "podSelector" in p]
    assert {json.dumps(p["podSelector"]["matchLabels"], sort_keys=True) for p in peers} == {
        json.dumps({"k8s-app": "kube-dns"}), json.dumps({"app.kubernetes.io/name": "redis"})}
    assert one(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")


def test_probes_ports_and_paths_match_the_config_the_pod_mounts(rendered, tmp_path):
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    maps = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    config_map = maps[volumes["config"]["configMap"]["name"]]
    config = tomllib.loads(config_map["data"][mounts["config"]["subPath"]])
    # The image's ENTRYPOINT reads the file the Deployment mounts.
    assert mounts["config"]["mountPath"] == entrypoint()[entrypoint().index("--config") + 1]
    assert mounts["rules"]["mountPath"] == config["masking"]["rules_dir"]
    assert mounts["cache"]["mountPath"] == config["masking"]["cache_dir"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port_of(config["server"]["listen"]), "admin": port_of(config["server"]["admin"])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    service_port = one(rendered, "Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"
    monitor = one(rendered, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert (monitor["port"], monitor["path"]) == ("admin", "/metrics")
    # The preStop sleep matches the readiness delay; a terminating pod outlives the preStop
    # sleep plus the drain's grace period (streams ended at its deadline, audit written), and
    # the grace period covers the longest silence of a stream.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    shutdown = config["shutdown"]
    assert pre_stop == shutdown["readiness_delay_secs"]
    read_timeout_s = config.get("upstream", {}).get("read_timeout_ms", 600_000) / 1000
    assert shutdown["grace_secs"] >= read_timeout_s
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown["grace_secs"] + 10
    # Rules are mounted as a directory (not subPath), so an in-place ConfigMap update reaches
    # the file watch (overlays/live-rules).
    assert "subPath" not in mounts["rules"] and config["server"]["watch"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The mounted config and rules pass `config check` (rules_dir pointed at the files the
    # ConfigMap is made from); the probes' routes answer in the entrypoint test below.
    rules = tmp_path / "rules"
    rules.mkdir()
    rules_map = maps[volumes["rules"]["configMap"]["name"]]
    for name, text in rules_map["data"].items():
        (rules / name).write_text(text)
    local = config_map["data"]["streammask.toml"].replace(config["masking"]["rules_dir"], str(rules))
    (tmp_path / "streammask.toml").write_text(local)
    check = config_check(tmp_path / "streammask.toml")
    assert check.returncode == 0, check.stdout + check.stderr
    rules_check = subprocess.run([str(PROXY_BIN), "rules", "check", "--rules", str(rules)],
                                 capture_output=True, text=True, timeout=600)
    assert rules_check.returncode == 0, rules_check.stdout[-2000:] + rules_check.stderr


def test_the_live_rules_overlay_updates_the_rules_configmap_in_place():
    """overlays/live-rules: the rules ConfigMap keeps its name (no content hash), so an
    update changes the mounted files in place and the pods' file watch reloads them; the
    config stays hashed (a config change still rolls the pods)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / "live-rules")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert "streammask-rules" in names, names
    assert any(n.startswith("streammask-config-") for n in names), names
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == "streammask-rules"


def test_every_config_compose_mounts_passes_config_check():
    compose = yaml.safe_load(COMPOSE.read_text())
    mounted = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target.endswith(".toml"):
                mounted.add((COMPOSE.parent / source).resolve())
    anchor = compose["x-streammask"]["volumes"]
    mounted |= {(COMPOSE.parent / v.split(":")[0]).resolve() for v in anchor if v.split(":")[1].endswith(".toml")}
    assert mounted == {IMAGE_CONFIG.resolve()}
    for path in mounted:
        check = config_check(path)
        assert check.returncode == 0, check.stdout + check.stderr
    # Compose's proxies publish the ports the image config listens on.
    config = tomllib.loads(IMAGE_CONFIG.read_text())
    assert compose["services"]["streammask"]["ports"] == [f"8080:{port_of(config['server']['listen'])}"]
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert all(port_of(t) == port_of(config["server"]["admin"]) for t in targets)


def test_the_image_entrypoint_serves_and_masks_against_the_mock(mock, tmp_path):
    from test_restore import Redis

    (tmp_path / "redis").mkdir()
    redis = Redis(tmp_path / "redis")
    port, admin = free_ports(2)
    command = entrypoint()
    # CI builds the image's files with deploy/docker/build.sh into STREAMMASK_IMAGE_ROOT; the
    # command then runs under that root exactly as written, else from the repository.
    root = os.environ.get("STREAMMASK_IMAGE_ROOT")
    if root:
        command = [root + arg if arg.startswith("/") else arg for arg in command]
    else:
        assert command[0] == "/usr/local/bin/streammask"
        command[0] = str(PROXY_BIN)
        command[command.index("--config") + 1] = str(IMAGE_CONFIG)
    assert Path(command[0]).is_file() and Path(command[command.index("--config") + 1]).is_file()
    # As Compose's mock profile runs it: the entrypoint, then flags it appends.
    command += ["--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
                "--upstream", f"http://127.0.0.1:{mock.port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMMASK_")}
    env.update(SECRET_ENV, HOME=str(tmp_path), STREAMMASK_REDIS_URL=redis.url)
    log = tmp_path / "proxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        wait_until(ready, 120, what="the entrypoint's proxy")
        assert proc.poll() is None, log.read_text()
        assert httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=5).status_code == 200
        assert "streammask_requests_total" in httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        body = json.dumps(user_request(f"deploy with AWS key {AWS_KEY_ID} please"))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/messages", content=body, timeout=30,
                       headers={"x-api-key": API_KEY, "content-type": "application/json"})
        assert r.status_code == 200, r.text
        received = mock.received()[-1]
        assert AWS_KEY_ID not in received["body"]
        assert "[MASKED:aws-access-key-id:" in received["body"]
        # The image config injects the upstream key: the caller's never goes upstream.
        assert mock.header(received, "x-api-key") == SECRET_ENV["ANTHROPIC_API_KEY"]
        # JSON logs: every line an object, and no secret in them.
        lines = [l for l in log.read_text().splitlines() if l.strip()]
        plain = [l for l in lines if not l.startswith("{")]
        assert lines and not plain, plain[:3]
        assert AWS_KEY_ID not in log.read_text()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        redis.stop()
