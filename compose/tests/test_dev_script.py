"""compose/dev as an operator uses it: start, status, stop, and failing cleanly when a port is
taken or a component does not come up (a clear message, a non-zero exit, nothing left
running). Runs the real script with its own state folder and ports."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEV = ROOT / "compose" / "dev"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def env(tmp_path):
    ports = {"kafka": free_port(), "controller": free_port(), "registry": free_port(), "prometheus": free_port()}
    e = dict(os.environ)
    e.update(
        EMBEDSTREAM_DEV_DIR=str(tmp_path),
        KAFKA_BOOTSTRAP=f"127.0.0.1:{ports['kafka']}",
        KAFKA_CONTROLLER_PORT=str(ports["controller"]),
        SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{ports['registry']}",
        PROMETHEUS_PORT=str(ports["prometheus"]),
    )
    yield e, ports, tmp_path
    subprocess.run([DEV, "down"], env=e, capture_output=True)


def dev(env, *args):
    return subprocess.run([DEV, *args], env=env, capture_output=True, text=True, timeout=600)


def nothing_running(state):
    run = state / "local" / "run"
    return not run.exists() or not any(run.iterdir())


def test_infra_status_down(env):
    e, ports, state = env
    r = dev(e, "infra")
    assert r.returncode == 0, r.stderr
    for port in ports.values():
        assert listening(port)
    status = dev(e, "status")
    assert status.returncode == 0
    for component in ("broker", "registry", "prometheus"):
        assert any(line.startswith(component) and line.endswith("healthy") for line in status.stdout.splitlines()), status.stdout
    # Running it again is safe: nothing is started twice.
    again = dev(e, "infra")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert dev(e, "down").returncode == 0
    for port in ports.values():
        assert not listening(port)
    assert nothing_running(state)
    # The broker's data is kept for the next start, with its cluster id.
    meta = (state / "local" / "data" / "kafka" / "meta.properties").read_text()
    assert "cluster.id=" in meta, meta
    # The broker logs through its log4j2 binding.
    assert "Kafka Server started" in (state / "local" / "logs" / "broker.log").read_text()


def infra_with_port_taken(env, port):
    """Runs `infra` while something else listens on `port`."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        return dev(env, "infra")


def test_a_taken_broker_port_fails_with_a_clear_message(env):
    e, ports, state = env
    r = infra_with_port_taken(e, ports["kafka"])
    assert r.returncode != 0
    assert f"port {ports['kafka']} is already taken" in r.stderr
    assert nothing_running(state)
    assert not listening(ports["registry"])


def test_a_taken_controller_port_fails_with_a_clear_message(env):
    e, ports, state = env
    r = infra_with_port_taken(e, ports["controller"])
    assert r.returncode != 0
    assert f"port {ports['controller']} is already taken, so the broker's controller cannot listen there" in r.stderr
    assert nothing_running(state)
    assert not listening(ports["kafka"])


def path_without(tmp_path, command):
    """A PATH of links to every command on the current PATH except `command`."""
    bin_dir = tmp_path / f"bin-without-{command}"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for f in pathlib.Path(d).glob("*") if pathlib.Path(d).is_dir() else []:
            target = bin_dir / f.name
            if f.name != command and not target.exists():
                target.symlink_to(f)
    return str(bin_dir)


def test_no_java_fails_with_a_clear_message(env):
    e, ports, state = env
    e = dict(e, PATH=path_without(state, "java"))
    e.pop("JAVA_HOME", None)
    r = dev(e, "infra")
    assert r.returncode != 0
    assert "no Java found: the Kafka broker needs Java 17 or newer" in r.stderr, r.stderr
    assert nothing_running(state)


def test_an_old_java_fails_with_a_clear_message(env):
    e, ports, state = env
    fake = state / "old-jdk"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "java").write_text("#!/bin/sh\necho '    java.specification.version = 11' >&2\n")
    (fake / "bin" / "java").chmod(0o755)
    r = dev(dict(e, JAVA_HOME=str(fake)), "infra")
    assert r.returncode != 0
    assert "is Java 11: the Kafka broker needs Java 17 or newer" in r.stderr, r.stderr
    assert nothing_running(state)


def test_a_maven_failure_fails_with_a_clear_message(env):
    e, ports, state = env
    # Maven offline with an empty local repository cannot resolve anything.
    home = state / "maven-home"
    (home / ".m2").mkdir(parents=True)
    (home / ".m2" / "settings.xml").write_text(
        f"<settings><offline>true</offline><localRepository>{home / 'repo'}</localRepository></settings>")
    r = dev(dict(e, MAVEN_OPTS=f"-Duser.home={home}"), "infra")
    assert r.returncode != 0
    assert "Maven could not resolve Apache Kafka" in r.stderr, r.stderr
    assert nothing_running(state)
    assert not list(state.glob("kafka/*/lib"))


def test_a_failing_registry_stops_the_broker_it_started(env):
    e, ports, state = env
    r = infra_with_port_taken(e, ports["registry"])
    assert r.returncode != 0
    assert f"port {ports['registry']} is already taken, so registry cannot start" in r.stderr
    assert "stopping what was started: broker" in r.stderr
    assert not listening(ports["kafka"])
    assert nothing_running(state)


def test_up_runs_the_platform_and_down_stops_it(env):
    e, ports, state = env
    platform, query, sink = free_port(), free_port(), free_port()
    e["PLATFORM_PORT"] = str(platform)
    e["QUERY_PORT"] = str(query)
    e["SINK_PORT"] = str(sink)
    e["EMBEDSTREAM_DEMO_ITEMS"] = "60"
    r = dev(e, "up")
    assert r.returncode == 0, r.stderr
    # up ingested the demo catalog's first 60 packages and waited until they were searchable.
    assert "60 of 60 items are searchable" in r.stderr, r.stderr
    hits = json.load(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{query}/v1/search", method="POST",
        headers={"content-type": "application/json"},
        data=json.dumps({"consumer": "search", "text": "library", "k": 3}).encode()), timeout=30))
    assert len(hits["results"]) == 3, hits
    # A filtered search on the attributes compose/consumers.toml declares for the demo
    # catalog: only items of the section, under the size, as many as match up to k.
    catalog = {}
    for line in (state / "local" / "catalog.jsonl").read_text().splitlines():
        item = json.loads(line)
        catalog[item["id"]] = item["attributes"]
    sections = [a["section"] for a in catalog.values()]
    section = max(set(sections), key=sections.count)
    sizes = sorted(int(a["installed_size"]) for a in catalog.values() if a["section"] == section)
    size = sizes[len(sizes) // 2]
    matching = sum(1 for a in catalog.values() if a["section"] == section and int(a["installed_size"]) <= size)
    body = {"consumer": "search", "text": "library", "k": 5,
            "filter": {"and": [{"attribute": "section", "eq": section},
                               {"attribute": "installed_size", "lte": size}]}}
    filtered = json.load(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{query}/v1/search", method="POST",
        headers={"content-type": "application/json"}, data=json.dumps(body).encode()), timeout=30))
    assert len(filtered["results"]) == min(5, matching), filtered
    for hit in filtered["results"]:
        attributes = catalog[hit["item_id"]]
        assert attributes["section"] == section and int(attributes["installed_size"]) <= size, (hit, attributes)
    # Each API answers as its OpenAPI document says: schemathesis sends requests generated
    # from the document (valid and invalid) and checks every answer's status, content type
    # and body against it, and that none is a server error.
    for name, port in (("router", query), ("sink", sink)):
        st = subprocess.run(
            [pathlib.Path(sys.executable).parent / "st", "run", f"http://127.0.0.1:{port}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                         "response_schema_conformance",
             "--phases", "examples,coverage,fuzzing", "--max-examples", "20", "--seed", "7",
             "--request-timeout", "60", "--workers", "2", "--no-color"],
            capture_output=True, text=True, timeout=900)
        if st.returncode != 0:
            pytest.fail(f"{name}:\n{st.stdout}\n{st.stderr}", pytrace=False)
    # The status page, as a browser shows it: the version with its 60 items, and the search
    # box's answer to the query in the address.
    browser = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", f"http://127.0.0.1:{query}/status?consumer=search&q=library"],
        capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr
    dom = browser.stdout
    assert 'data-loaded="1"' in dom and 'data-searched="1"' in dom, dom
    version = dom[dom.index('<tr data-model="minilm-l6-v2@1">'):]
    version = version[:version.index("</tr>")]
    assert '<td class="num items">60</td>' in version, version
    # Rows the page drew (its own script holds the row's template too).
    assert len(re.findall(r'<tr class="result"><td class="num">\d+</td>', dom)) == 10, dom
    assert listening(platform) and listening(query)
    status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{query}/v1/status", timeout=10))
    assert [v["model"] for v in status["versions"]] == ["minilm-l6-v2@1"], status
    assert status["versions"][0]["sink"]["topic"] == "embeddings.minilm-l6-v2.v1", "the version's sink answers"
    page = urllib.request.urlopen(f"http://127.0.0.1:{query}/status", timeout=10).read().decode()
    assert "<title>embedstream status</title>" in page
    status = dev(e, "status")
    assert any(line.startswith("platform") and line.endswith("healthy") for line in status.stdout.splitlines()), status.stdout
    # The embed stage is running: it registered the initial model in the control log.
    models = subprocess.run(
        [ROOT / "target" / "release" / "embedstream", "models", "status",
         "--bootstrap", e["KAFKA_BOOTSTRAP"], "--registry-url", e["SCHEMA_REGISTRY_URL"]],
        capture_output=True, text=True, timeout=60,
    )
    assert models.returncode == 0, models.stderr
    assert '"model":"minilm-l6-v2@1"' in models.stdout and '"state":"ACTIVE"' in models.stdout, models.stdout
    again = dev(e, "up")
    assert again.returncode == 0, again.stderr
    assert "platform is already running" in again.stderr
    assert "The demo catalog was ingested before (60 items)" in again.stderr, again.stderr
    assert dev(e, "down").returncode == 0
    assert not listening(platform) and not listening(query) and not listening(sink)
    assert nothing_running(state)
    # The data survives down + up: the index comes back with the 60 items, none produced again.
    after = dev(e, "up")
    assert after.returncode == 0, after.stderr
    assert "The demo catalog was ingested before (60 items)" in after.stderr, after.stderr
    items = 0
    for _ in range(120):
        try:
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{query}/v1/status", timeout=10))
            items = (status["versions"][0]["sink"] or {}).get("items", 0)
        except OSError:
            items = 0
        if items == 60:
            break
        time.sleep(0.5)
    assert items == 60, status
    assert dev(e, "down").returncode == 0
    assert nothing_running(state)
