"""The Grafana dashboard against a real Prometheus scraping real service replicas.

Prometheus (Debian's `prometheus` binary, installed by .ci/run) runs docker/prometheus/prometheus.yml
with only the targets changed (the compose service names become the two `lmindexer serve` processes
on 127.0.0.1) and shorter intervals. After real traffic (search, recommend, index-documents, document
lookups, a 404, a 422), every PromQL expression of docker/grafana/dashboards/lmindexer.json is
evaluated through Prometheus' HTTP API and must return data.

The same replicas also run behind docker/nginx/nginx.conf (targets changed the same way) when an
`nginx` binary is present.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from service.telemetry import Metrics
from tests.integration.conftest import (
    API_KEY,
    REPO,
    Replica,
    bundle_doc_ids,
    free_port,
    log_tail,
    stop_process,
    wait_http_ok,
)

pytestmark = pytest.mark.integration

PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "lmindexer.json"
NGINX_CONFIG = REPO / "docker" / "nginx" / "nginx.conf"
JOB = "lmindexer"
SCRAPE_INTERVAL = "1s"
# Grafana's built-in variables, as Grafana would expand them for a 5-minute view of this test's data.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m"}
DATA_TIMEOUT_S = 40.0  # generous for a loaded CI machine; only a failing run waits this long


# ------------------------------------------------------------------------------------------ dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL expression) for every target of every panel."""
    queries = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((f"{panel['title']} / {target['refId']}", target["expr"]))
    return queries


def expand(expr: str, variables: dict[str, str]) -> str:
    """The expression as Grafana sends it: its variables replaced, none left over."""
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"unknown dashboard variable(s) {leftover} in {expr}"
    return expr


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Grafana's built-ins, plus each template variable set to 'All' (its allValue regex)."""
    variables = dict(GRAFANA_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        assert variable.get("includeAll") and variable.get("allValue"), (
            f"variable {variable['name']} needs includeAll and an allValue regex")
        variables[f"${{{variable['name']}}}"] = variable["allValue"]
        variables[f"${variable['name']}"] = variable["allValue"]
    return variables


# ------------------------------------------------------------------------------------------ prometheus


def local_prometheus_config(replicas: list[Replica]) -> dict[str, Any]:
    """The repo's scrape configuration with only the lmindexer targets (and the intervals) changed."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    local = copy.deepcopy(config)
    local.setdefault("global", {}).update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    jobs = [job for job in local["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, f"{PROMETHEUS_CONFIG} must have one scrape job named {JOB}"
    job = jobs[0]
    repo_targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert [t.split(":")[0] for t in repo_targets] == [r.name for r in replicas], (
        f"the repo scrapes {repo_targets}; this test stands in {[r.name for r in replicas]} for them")
    by_name = {r.name: r.address for r in replicas}
    for group in job["static_configs"]:
        group["targets"] = [by_name[t.split(":")[0]] for t in group["targets"]]
    job["scrape_interval"] = SCRAPE_INTERVAL
    job["scrape_timeout"] = SCRAPE_INTERVAL
    return local


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.http = httpx.Client(base_url=url, timeout=5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (or scalar, as one sample)."""
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (
            f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", f"{expr!r} gave a {data['resultType']}, not an instant vector"
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.http.get("/api/v1/targets").json()["data"]["activeTargets"]


@pytest.fixture(scope="module")
def prometheus(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no `prometheus` binary on PATH (Debian's package `prometheus`; .ci/prepare installs it)")
    workdir = tmp_path_factory.mktemp("prometheus")
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(local_prometheus_config(replicas)))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_http_ok(f"{server.url}/-/ready", proc, log)
        yield server
    finally:
        server.http.close()
        stop_process(proc)


# ------------------------------------------------------------------------------------------ traffic


def drive_traffic(replicas: list[Replica], doc_ids: list[str], wave: int) -> dict[str, int]:
    """Real requests to every replica; returns how many /search requests were sent in all."""
    searches = 0
    for n, replica in enumerate(replicas):
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            for query in ("red lipstick", "vegan shampoo", "lavender serum", "red lipstick"):  # a repeat: cache
                response = client.post("/search", json={"query": query, "k": 5})
                assert response.status_code == 200, response.text
                assert response.json()["results"], f"no hits for {query!r} on {replica.name}"
                searches += 1
            response = client.post("/recommend", json={"history": doc_ids[:3], "k": 5})
            assert response.status_code == 200, response.text
            new_docs = [{"doc_id": f"integration-{wave}-{replica.name}-{i}", "text": f"argan oil mask {wave} {n} {i}",
                         "metadata": {"source": "integration-test"}} for i in range(3)]
            response = client.post("/index-documents", json={"documents": new_docs},
                                   headers={"Authorization": f"Bearer {API_KEY}"})
            assert response.status_code == 200, response.text
            assert client.get(f"/documents/{doc_ids[0]}").status_code == 200
            response = client.get("/documents/no-such-document")
            assert response.status_code == 404, response.text
            response = client.post("/search", json={"k": 5})  # no query
            assert response.status_code == 422, response.text
            # Concurrent searches, so the micro-batcher has something to group.
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(
                    lambda i, c=client: c.post("/search", json={"query": f"mint toner {i}", "k": 3}).status_code,
                    range(16)))
            assert statuses == [200] * 16
            searches += 16
    return {"searches": searches}


def wait_for_searches(prometheus: Prometheus, count: int, deadline: float) -> None:
    """Until Prometheus has scraped ``count`` successful searches (summed over the replicas)."""
    expr = f'sum(lmindexer_requests_total{{job="{JOB}", endpoint="/search", status="200"}})'
    while time.monotonic() < deadline:
        result = prometheus.query(expr)
        if result and float(result[0]["value"][1]) >= count:
            return
        time.sleep(0.25)
    pytest.fail(f"Prometheus never saw the {count} searches: {prometheus.query(expr)}")


@pytest.fixture(scope="module")
def scraped(replicas: list[Replica], prometheus: Prometheus, integration_bundle: Path) -> dict[str, int]:
    """Traffic sent in two waves, each scraped from both replicas.

    Two waves because traffic flows over time: a series born in the middle of one burst has no earlier
    sample, so a rate over it (and a quantile of that rate) needs a second burst to see an increase.
    """
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while time.monotonic() < deadline:  # both targets up before the traffic
        ups = [t for t in prometheus.targets() if t["labels"].get("job") == JOB and t["health"] == "up"]
        if len(ups) == len(replicas):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"Prometheus did not scrape both replicas: {prometheus.targets()}\n{log_tail(prometheus.log)}")
    doc_ids = bundle_doc_ids(integration_bundle, 3)
    searches = 0
    for wave in (1, 2):
        searches += drive_traffic(replicas, doc_ids, wave=wave)["searches"]
        wait_for_searches(prometheus, searches, deadline)
    return {"searches": searches}


# ------------------------------------------------------------------------------------------ tests


def exported_sample_names() -> set[str]:
    """Every sample name the service can export (service/telemetry.py), with the type's suffixes."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    family: Metric
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_dashboard_layout_is_one_grafana_can_load() -> None:
    """Unique panel ids and refIds, panels inside the 24-column grid and not overlapping."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: {grid}"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        ref_ids = [target["refId"] for target in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refIds"
        assert panel["type"] in ("row", "timeseries", "stat"), panel["type"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']} has no query"


def test_dashboard_names_only_metrics_the_service_exports() -> None:
    """A misspelt name would show a flat 0 behind `or vector(0)`: every name must be a real one."""
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for _, expr in dashboard_queries(dashboard) for name in re.findall(r"\blmindexer_\w+", expr)}
    unknown = used - exported_sample_names()
    assert not unknown, f"the dashboard queries metrics that service/telemetry.py does not export: {sorted(unknown)}"
    families = {n.rsplit("_", 1)[0] if n.endswith(("_bucket", "_sum", "_count")) else n for n in used}
    for required in ("lmindexer_requests_total", "lmindexer_request_duration_seconds",
                     "lmindexer_queue_wait_seconds", "lmindexer_inference_duration_seconds", "lmindexer_batch_size",
                     "lmindexer_cache_lookups_total", "lmindexer_redis_errors_total",
                     "lmindexer_documents_indexed_total", "lmindexer_index_documents", "lmindexer_index_version",
                     "lmindexer_invalid_ids_total"):
        assert required in families, f"the dashboard has no panel on {required}"


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample, and at least one that is a number (a NaN quantile shows nothing)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_every_dashboard_query_returns_data(prometheus: Prometheus, scraped: dict[str, int]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard_variables(dashboard)
    queries = [(where, expand(expr, variables)) for where, expr in dashboard_queries(dashboard)]
    assert len(queries) >= 20, "the dashboard lost its panels"
    # A rate needs two samples after the traffic: wait (bounded) until every query has data.
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:
        empty = [(where, expr, prometheus.query(expr)) for where, expr in queries]
        empty = [(where, expr, result) for where, expr, result in empty if not has_data(result)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not empty, "dashboard queries without data:\n" + "\n".join(
        f"- {where}: {expr}\n    -> {result}" for where, expr, result in empty)


def test_dashboard_variable_lists_every_replica(prometheus: Prometheus, scraped: dict[str, int],
                                                replicas: list[Replica]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: expected label_values(selector, label), got {query}"
        selector, label = match.groups()
        values = {sample["metric"].get(label) for sample in prometheus.query(selector)}
        assert values == {r.address for r in replicas}, f"{variable['name']} would offer {values}"


def test_dashboard_shows_the_traffic_that_was_sent(prometheus: Prometheus, scraped: dict[str, int],
                                                   replicas: list[Replica]) -> None:
    """Not just 'some data': the panels' series say what happened."""
    def by(label: str, expr: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in prometheus.query(expr)}

    assert by("", f'sum(up{{job="{JOB}"}})') == {"": float(len(replicas))}
    requests = by("endpoint", "sum by (endpoint) (lmindexer_requests_total)")
    for endpoint in ("/search", "/recommend", "/index-documents", "/documents/{doc_id}"):
        assert requests.get(endpoint, 0) > 0, f"no {endpoint} in {requests}"
    statuses = by("status", "sum by (status) (lmindexer_requests_total)")
    assert statuses.get("404", 0) >= 2 * len(replicas) and statuses.get("422", 0) >= 2 * len(replicas), statuses
    indexed = by("source", "sum by (source) (lmindexer_documents_indexed_total)")
    assert indexed.get("api", 0) >= 2 * 3 * len(replicas), indexed
    sizes = by("instance", "max by (instance) (lmindexer_index_documents)")
    assert set(sizes) == {r.address for r in replicas}, sizes
    batches = by("model", "sum by (model) (lmindexer_batch_size_count)")
    assert batches.get("retriever", 0) > 0, batches


# ------------------------------------------------------------------------------------------ nginx


@pytest.fixture
def nginx(replicas: list[Replica], tmp_path: Path) -> Iterator[str]:
    """docker/nginx/nginx.conf in front of the replicas: only the upstream servers and the listen port changed."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
    if binary is None:
        pytest.skip("no `nginx` binary (Debian's package `nginx-light`; .ci/prepare installs it)")
    text = NGINX_CONFIG.read_text()
    for replica in replicas:
        text, count = re.subn(rf"server {re.escape(replica.name)}:8000\b", f"server {replica.address}", text)
        assert count == 1, f"{NGINX_CONFIG} must list `server {replica.name}:8000` once"
    port = free_port()
    text, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert count == 1
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    log = tmp_path / "nginx.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, "-p", str(tmp_path), "-c", str(config), "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/nginx-health", proc, log, timeout_s=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def search_count(replica: Replica) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    match = re.search(r'^lmindexer_requests_total\{endpoint="/search",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_nginx_config_balances_over_both_replicas(nginx: str, replicas: list[Replica]) -> None:
    before = [search_count(r) for r in replicas]
    with httpx.Client(base_url=nginx, timeout=30) as client:
        for i in range(12):
            response = client.post("/search", json={"query": f"rose perfume {i}", "k": 3})
            assert response.status_code == 200, response.text
        # Writes pass through with their API key; metrics are per replica, not served by the balancer.
        response = client.post("/index-documents", headers={"X-API-Key": API_KEY},
                               json={"documents": [{"doc_id": "through-nginx", "text": "jasmine body lotion"}]})
        assert response.status_code == 200, response.text
        assert client.get("/metrics").status_code == 404
    gained = [search_count(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(gained) == 12 and all(g > 0 for g in gained), f"searches per replica through nginx: {gained}"
