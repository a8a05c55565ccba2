"""Checks of the production-like stack that can be made without a Docker engine: the compose
file parses and names the right images, its ports and variables match what compose/dev and
the embedstream binary use, its commands parse, and the Prometheus configs are valid."""

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

COMPOSE = pathlib.Path(__file__).resolve().parents[1]
ROOT = COMPOSE.parent
BIN = ROOT / "target" / "release" / "embedstream"


@pytest.fixture(scope="module")
def stack():
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_services_use_the_real_components(stack):
    images = {name: svc.get("image", "") for name, svc in stack["services"].items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["schema-registry"].startswith("confluentinc/cp-schema-registry:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    assert stack["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_ports_match_the_local_stack(stack):
    dev = (COMPOSE / "dev").read_text()
    kafka_default = re.search(r"KAFKA_BOOTSTRAP:-127\.0\.0\.1:(\d+)", dev).group(1)
    registry_default = re.search(r"SCHEMA_REGISTRY_URL:-http://127\.0\.0\.1:(\d+)", dev).group(1)
    prometheus_default = re.search(r"PROMETHEUS_PORT=\$\{PROMETHEUS_PORT:-(\d+)\}", dev).group(1)
    published = lambda svc: {p.split(":")[-2] for p in stack["services"][svc]["ports"]}
    assert kafka_default in published("kafka")
    assert registry_default in published("schema-registry")
    assert prometheus_default in published("prometheus")
    assert stack["services"]["schema-registry"]["environment"]["SCHEMA_REGISTRY_KAFKASTORE_TOPIC"] == "_schemas"


def test_embedstream_services_use_variables_the_binary_reads(stack):
    sources = "".join(p.read_text() for p in (ROOT / "pipeline" / "src").rglob("*.rs"))
    read_by_binary = set(re.findall(r'env = "([A-Z_]+)"', sources))
    for name, svc in stack["services"].items():
        if svc.get("image") != "embedstream:latest":
            continue
        for var in svc.get("environment", {}):
            assert var in read_by_binary, f"{name} sets {var}, which embedstream does not read"


def test_embedstream_commands_parse(stack):
    assert BIN.exists(), "build first: cargo build --release --bin embedstream"
    for name, svc in stack["services"].items():
        if svc.get("image") != "embedstream:latest":
            continue
        result = subprocess.run([BIN, *svc["command"], "--help"], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_dockerfile_builds_the_binary_it_runs():
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "--bin embedstream" in dockerfile
    assert 'name = "embedstream"' in (ROOT / "pipeline" / "Cargo.toml").read_text()


@pytest.mark.parametrize("config", ["prometheus.local.yml", "prometheus.docker.yml"])
def test_prometheus_configs_are_valid(config, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (compose/dev installs it)"
    text = (COMPOSE / "prometheus" / config).read_text().replace("@REGISTRY@", "127.0.0.1:8081").replace("@PLATFORM@", "127.0.0.1:9301")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    shutil.copy(COMPOSE / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_is_provisioned_and_reads_real_metrics(stack, exported_metrics):
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "embedstream.json").read_text())
    provider = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "dashboards" / "embedstream.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = stack["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts, mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    recorded = set(re.findall(r"record: (\S+)", (COMPOSE / "prometheus" / "alerts.yml").read_text()))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        for name in re.findall(r"\b(embedstream[a-z0-9_:]+)", expr):
            name = re.sub(r"_bucket$", "", name)
            assert name in exported_metrics or name in recorded, f"{name} (in {expr!r}) is not exported"
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for wanted in ["lag", "Tombstones", "Backfill", "divergence", "p95", "cosine"]:
        assert wanted in titles, wanted


def test_kafka_is_the_version_compose_dev_runs_and_keeps_its_data_on_the_volume(stack):
    pom = (COMPOSE / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    kafka = stack["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{version}"
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1] for v in kafka["volumes"]}
    assert any(log_dirs == m or log_dirs.startswith(m + "/") for m in mounts), (log_dirs, mounts)


def test_host_ports_are_loopback_only_and_every_service_has_a_health_check(stack):
    for name, svc in stack["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        if svc.get("restart") == "no":
            continue  # one-shot jobs
        assert "healthcheck" in svc, f"{name} has no health check"


def test_query_api_and_sink_ports_match_the_local_stack(stack):
    dev = (COMPOSE / "dev").read_text()
    query = re.search(r"QUERY_PORT=\$\{QUERY_PORT:-(\d+)\}", dev).group(1)
    sink = re.search(r"SINK_PORT=\$\{SINK_PORT:-(\d+)\}", dev).group(1)
    published = lambda svc: {p.split(":")[-2] for p in stack["services"][svc]["ports"]}
    assert query in published("router")
    assert sink in published("sink")
    assert f"0.0.0.0:{query}" in stack["services"]["router"]["command"]
    assert f"0.0.0.0:{sink}" in stack["services"]["sink"]["command"]


def test_embedstream_services_are_healthy_when_ready(stack):
    for name, svc in stack["services"].items():
        if svc.get("image") != "embedstream:latest" or svc.get("restart") == "no":
            continue
        assert "/ready" in " ".join(svc["healthcheck"]["test"]), name
    sources = (ROOT / "pipeline" / "src" / "telemetry.rs").read_text()
    assert '"/ready"' in sources and '"/healthz"' in sources
