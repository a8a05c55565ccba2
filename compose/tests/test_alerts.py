"""The Prometheus alert rules (compose/prometheus/alerts.yml): valid, their unit tests pass, and
every metric they read is one the code exports (a renamed metric would silence an alert)."""

import pathlib
import re
import shutil
import subprocess

import yaml

COMPOSE = pathlib.Path(__file__).resolve().parents[1]
RULES = COMPOSE / "prometheus" / "alerts.yml"


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool comes with Debian's prometheus package (compose/dev installs it)"
    return path


def test_rules_are_valid():
    result = subprocess.run([promtool(), "check", "rules", RULES], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=RULES.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_runbook_alert_has_a_firing_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
             if t.get("exp_alerts")}
    assert alerts == fired, f"alerts without a case that fires: {sorted(alerts - fired)}"
    for name in ["EmbeddingDriftBadPush", "NewVersionWriteSuccessLow", "DualWriteDivergenceHigh",
                 "IndexTombstonesHigh", "BackfillThroughputDropped", "ConsumerQueryP95OverSLO",
                 "SinkConsumerLagGrowing"]:
        assert name in alerts


def test_rules_read_metrics_the_code_exports(exported_metrics):
    rules = yaml.safe_load(RULES.read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used.update(re.findall(r"\b(embedstream_[a-z_]+)", rule["expr"]))
    used = {re.sub(r"_bucket$", "", m) for m in used}
    missing = used - exported_metrics
    assert not missing, f"alert rules read metrics nothing exports: {sorted(missing)}"
