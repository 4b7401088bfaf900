from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from django.test import Client

from trading.heartbeat import beat

DOCKER = Path(__file__).resolve().parents[2] / "docker"
METRIC = re.compile(r"\bfp_[a-z0-9_]+\b")


def exported(text: str) -> dict[str, list[str]]:
    series: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            series.setdefault(name, []).append(line)
    return series


@pytest.fixture
def scrape(db, redis_clean):
    def _scrape() -> dict[str, list[str]]:
        response = Client().get("/metrics")
        assert response.status_code == 200
        return exported(response.content.decode())
    return _scrape


def test_every_metric_the_alert_rules_and_dashboards_use_is_exported(scrape):
    series = scrape()
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    used = {m for rule in rules["groups"][0]["rules"] for m in METRIC.findall(rule["expr"])}
    for path in (DOCKER / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            used |= set(METRIC.findall(panel["targets"][0]["expr"]))
    # Gauges with labels and no rows yet still announce themselves in HELP lines.
    response_text = Client().get("/metrics").content.decode()
    announced = set(re.findall(r"^# HELP (fp_[a-z0-9_]+)", response_text, re.M))
    assert used, "rules and dashboards name metrics"
    assert used <= announced | set(series)
    assert len(list((DOCKER / "grafana" / "dashboards").glob("*.json"))) == 6


def test_heartbeat_age_is_reported_per_process_and_a_missing_one_is_very_old(scrape):
    beat("feed")
    lines = {line.split("}")[0] + "}": float(line.split()[-1]) for line in scrape()["fp_heartbeat_age_seconds"]}
    assert lines['fp_heartbeat_age_seconds{process="feed"}'] < 5
    assert lines['fp_heartbeat_age_seconds{process="worker-execute"}'] > 1e8


@pytest.mark.django_db(transaction=True)
def test_kill_switch_state_is_exported(scrape):
    from risk.services import kill_switch_engage

    assert scrape()["fp_kill_switch_engaged"] == ["fp_kill_switch_engaged 0.0"]
    kill_switch_engage(actor=None, reason="metrics drill")
    assert scrape()["fp_kill_switch_engaged"] == ["fp_kill_switch_engaged 1.0"]


def test_metrics_require_the_token_when_one_is_set(db, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
