"""Checks of the production deployment files (no Docker engine, Envoy, Prometheus or Grafana
binary here): Debian's docker-compose must accept docker-compose.yml; envoy.yaml must route
grpc-web with CORS over both flashsale nodes with HTTP/2 upstreams and gRPC health checks, and
pass the client's address to nodes that trust it; Prometheus must scrape every node, and the
Grafana dashboard must query only metrics a running node exports (checked against the real
binary: `$FLASHSALE_BIN`, else target/debug/flashsale)."""

import ipaddress
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from flashsale_server import NO_RATE_LIMITS, binary, running_server  # noqa: E402

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "flashsale.yml"
DASHBOARD = GRAFANA / "dashboards" / "flashsale.json"
METRIC = re.compile(r"flashsale_[a-z_]+")


def compose_config() -> dict:
    """docker-compose.yml as docker-compose resolves it (anchors, defaults), with a secret set."""
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: run scripts/test, which installs it"
    env = dict(os.environ, JWT_SECRET="x" * 32)
    out = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def nodes(services: dict) -> list[str]:
    """The flashsale nodes: the services with a metrics port."""
    found = sorted(name for name, service in services.items()
                   if "METRICS_PORT" in (service.get("environment") or {}))
    assert found, "no flashsale node (a service with METRICS_PORT) in docker-compose.yml"
    return found


def mounts(service: dict) -> dict[str, str]:
    """A service's bind mounts in docker-compose.yml as written: container path -> host path
    relative to the repository."""
    result = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("."):
            result[target] = os.path.normpath(source)
    return result


def test_compose_file_is_accepted_and_complete():
    compose = shutil.which("docker-compose")
    config = compose_config()
    services = config["services"]
    assert {"mongo", "redis", "flashsale1", "flashsale2", "envoy", "prometheus", "grafana"} <= set(services)
    assert "--replSet" in services["mongo"]["command"]
    # A node killed inside a transaction blocks its sale's commits until the server reaps the
    # transaction: the README states this bound.
    assert "transactionLifetimeLimitSeconds=10" in services["mongo"]["command"]
    assert "rs.initiate" in " ".join(services["mongo"]["healthcheck"]["test"])
    assert "--appendonly" in services["redis"]["command"]
    for node in ("flashsale1", "flashsale2"):
        env = services[node]["environment"]
        assert "replicaSet=rs0" in env["MONGODB_URI"]
        assert env["REDIS_URI"].startswith("redis://redis")
        assert env["JWT_SECRET"] == "x" * 32
    # Without a shared secret the nodes could not verify each other's tokens: refused.
    no_secret = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    refused = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env=no_secret, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0


def _filters(envoy):
    listener = envoy["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager, [f["name"] for f in manager["http_filters"]]


def test_envoy_translates_grpc_web_with_cors_before_routing():
    envoy = yaml.safe_load((ROOT / "envoy.yaml").read_text())
    manager, names = _filters(envoy)
    assert names.index("envoy.filters.http.grpc_web") < names.index("envoy.filters.http.router")
    assert names.index("envoy.filters.http.cors") < names.index("envoy.filters.http.router")
    assert names[-1] == "envoy.filters.http.router"
    vhost = manager["route_config"]["virtual_hosts"][0]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    for header in ("x-grpc-web", "authorization", "content-type"):
        assert header in cors["allow_headers"]
    assert "grpc-status" in cors["expose_headers"]
    assert all(r["route"]["cluster"] == "flashsale" for r in vhost["routes"])


def test_envoy_balances_over_both_nodes_with_http2_and_health_checks():
    envoy = yaml.safe_load((ROOT / "envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    hosts = {
        e["endpoint"]["address"]["socket_address"]["address"]
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    }
    assert hosts == {"flashsale1", "flashsale2"}
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == "flashsale.v1.PurchaseService"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for node in hosts:
        assert node in compose["services"]


def test_nodes_trust_envoy_alone_and_limit_per_address():
    config = compose_config()
    services = config["services"]
    (network,) = config["networks"]
    subnets = [ipaddress.ip_network(c["subnet"]) for c in config["networks"][network]["ipam"]["config"]]
    for name, service in services.items():
        assert network in service.get("networks", {}), f"{name} is not on the {network} network"
    envoy = ipaddress.ip_address(services["envoy"]["networks"][network]["ipv4_address"])
    assert any(envoy in subnet for subnet in subnets)
    # Addresses handed out to other containers never include Envoy's.
    for c in config["networks"][network]["ipam"]["config"]:
        if "ip_range" in c:
            assert envoy not in ipaddress.ip_network(c["ip_range"])
    for node in nodes(services):
        env = services[node]["environment"]
        assert env["TRUSTED_PROXIES"] == str(envoy)
        # Behind a proxy that names the client, the per-address limits stay on.
        for limit in ("IP_PURCHASES_PER_SEC", "IP_LOGINS_PER_SEC"):
            assert str(env.get(limit, "")).strip() != "0", f"{node} turns {limit} off"


def test_envoy_names_the_client_and_trusts_no_client_header():
    envoy = yaml.safe_load((ROOT / "envoy.yaml").read_text())
    manager, _ = _filters(envoy)
    # The downstream peer is the client: Envoy appends it to x-forwarded-for and sets
    # x-envoy-external-address, trusting no x-forwarded-for hop sent by the client.
    assert manager["use_remote_address"] is True
    assert manager.get("xff_num_trusted_hops", 0) == 0
    # Requests from private addresses count as external too, so a client's own
    # x-envoy-external-address is replaced: only loopback is internal.
    ranges = manager["internal_address_config"]["cidr_ranges"]
    assert ranges, "an empty list would make every private address internal"
    for cidr in ranges:
        network = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}")
        assert network.is_loopback, network


def _scrape_targets():
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = []
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for group in job["static_configs"]:
            targets += group["targets"]
    return prometheus, targets


def test_prometheus_scrapes_every_node():
    prometheus, targets = _scrape_targets()
    assert prometheus["global"]["scrape_interval"] == "5s"
    services = compose_config()["services"]
    expected = [f"{node}:{services[node]['environment']['METRICS_PORT']}" for node in nodes(services)]
    assert sorted(targets) == sorted(expected)
    assert len(set(targets)) == len(targets)
    written = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert mounts(written["prometheus"]).get("/etc/prometheus/prometheus.yml") == os.path.relpath(PROMETHEUS_CONFIG, ROOT)
    assert "--config.file=/etc/prometheus/prometheus.yml" in written["prometheus"]["command"]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets_of(board: dict) -> list[dict]:
    return [t for panel in board["panels"] for t in panel.get("targets", [])]


def queries_of(board: dict) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and template variables."""
    queries = [t["expr"] for t in targets_of(board)]
    for variable in board["templating"]["list"]:
        query = variable["query"]
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_grafana_is_provisioned_with_the_dashboard():
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    uid = source["uid"]

    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    assert board["panels"], "an empty dashboard"
    assert {p["type"] for p in board["panels"]} <= {"timeseries", "stat"}
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert METRIC.search(target["expr"]), target["expr"]
    (sale,) = [v for v in board["templating"]["list"] if v["name"] == "sale"]
    assert sale["datasource"]["uid"] == uid and sale["includeAll"]
    assert any('sale=~"$sale"' in t["expr"] for t in targets_of(board))

    # The provider loads the directory compose mounts the dashboard into, and compose mounts
    # the provisioning files where Grafana reads them.
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = mounts(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"])
    assert grafana.get(provider["options"]["path"]) == os.path.relpath(DASHBOARD.parent, ROOT)
    assert grafana.get("/etc/grafana/provisioning") == os.path.relpath(DATASOURCES.parents[1], ROOT)


def test_the_per_sale_gauges_are_not_summed_over_nodes():
    # Every node reports the same figure of the shared live state: a sum would count it twice.
    for expr in queries_of(dashboard()):
        for name in METRIC.findall(expr):
            if name.startswith("flashsale_units_") or name == "flashsale_waitlist_length":
                assert not re.search(r"\bsum\b", expr), expr


# Series a node creates only on an event a single local node cannot be made to have: MongoDB
# transaction retries need the MongoDB backend and a conflicting transaction. The source must
# still emit them (checked below), and the dashboard must still use them (else drop them here).
ONLY_ON_MONGODB_CONFLICTS = {"flashsale_record_retries_total"}


def exported(text: str) -> dict[str, list[dict[str, str]]]:
    """Prometheus text format: metric name -> the label sets of its samples."""
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        labels = {}
        if line[len(name):].startswith("{"):
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', line[len(name):line.rindex("}")]))
        series.setdefault(name, []).append(labels)
    return series


def scrape(server) -> dict[str, list[dict[str, str]]]:
    with urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=10) as response:
        assert response.status == 200
        return exported(response.read().decode())


@pytest.fixture(scope="module")
def live_series(tmp_path_factory):
    """The series of a running node after real work: a sale bought from (once, then refused),
    watched, sign-ins beyond the hashing pool refused, the sale ended; scraped while the sale
    was open (its per-sale gauges are set at scrapes of open sales) and after."""
    try:
        binary()
    except FileNotFoundError as error:
        pytest.fail(str(error))
    from flashsale_client import Client, FlashsaleError, grpc  # generates the API's modules
    from flashsale.v1 import admin_pb2, auth_pb2, common_pb2

    # One hashing thread and no queue: sign-ins at once are refused (flashsale_auth_refused_total).
    args = (*NO_RATE_LIMITS, "--auth-cores", "0.5", "--auth-queue", "0")
    with running_server(tmp_path_factory.mktemp("metrics"), args) as server:
        with Client(server.addr, server.token("admin")) as admin:
            product = admin.admin.CreateProduct(
                admin_pb2.CreateProductRequest(name="Sneaker", initial_inventory=10),
                metadata=admin.metadata(), timeout=10)
            request = admin_pb2.CreateSaleRequest(
                product_id=product.id, allocated=5,
                unit_price=common_pb2.Money(amount_minor=1999, currency="USD"),
                per_user_limit=1, max_per_purchase=1)
            request.end_time.FromDatetime(datetime.now(timezone.utc) + timedelta(hours=1))
            sale = admin.admin.CreateSale(request, metadata=admin.metadata(), timeout=10)

        with Client(server.addr) as viewer, \
                Client(server.addr, server.token("buyer", "deploy-buyer", "Buyer")) as buyer:
            watch = viewer.watch(sale.id)
            assert next(watch).remaining == 5  # the stream is open (flashsale_watchers)
            assert buyer.buy(sale.id, 1).order.quantity == 1
            with pytest.raises(FlashsaleError) as refused:
                buyer.buy(sale.id, 1)  # over the limit of 1 (flashsale_errors_total)
            assert refused.value.reason == "USER_LIMIT_REACHED"

            storm = [viewer.auth.Register.future(auth_pb2.RegisterRequest(
                email=f"storm{i}.{uuid.uuid4().hex[:8]}@example.com", display_name=f"Storm {i}",
                password="correct horse battery"), timeout=60) for i in range(24)]
            busy = 0
            for call in storm:
                try:
                    call.result()
                except grpc.RpcError as error:
                    assert FlashsaleError.from_rpc_error(error).reason == "SIGN_IN_BUSY"
                    busy += 1
            assert busy, "24 sign-ins at once on one hashing thread with no queue: some are refused"

            open_sale = scrape(server)
            watch.close()

        with Client(server.addr, server.token("admin")) as admin:
            admin.admin.EndSale(admin_pb2.EndSaleRequest(sale_id=sale.id), metadata=admin.metadata(), timeout=10)
        ended = scrape(server)
    return {name: open_sale.get(name, []) + ended.get(name, []) for name in {*open_sale, *ended}}


def test_the_dashboard_queries_only_metrics_a_node_exports(live_series):
    board = dashboard()
    used = {name for query in queries_of(board) for name in METRIC.findall(query)}
    assert ONLY_ON_MONGODB_CONFLICTS <= used, "drop the names the dashboard no longer uses"
    missing = sorted(used - set(live_series) - ONLY_ON_MONGODB_CONFLICTS)
    assert not missing, (f"the dashboard queries {missing}, which the node does not export; it "
                         f"exports {sorted(n for n in live_series if n.startswith('flashsale_'))}")
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    for name in ONLY_ON_MONGODB_CONFLICTS:
        assert re.search(rf'metrics::\w+!\(\s*"{name}"', source), f"the server no longer emits {name}"

    for query in queries_of(board):
        # Exact label matchers (e.g. quantile="0.99" of a summary) select existing series.
        for name, matchers in re.findall(r"(flashsale_[a-z_]+)\{([^}]*)\}", query):
            for label, value in re.findall(r'(\w+)="([^"]*)"', matchers):
                if name in live_series:
                    assert any(s.get(label) == value for s in live_series[name]), (query, label, value)
        # Grouping labels exist on the series grouped (Prometheus adds instance and job).
        for labels, rest in re.findall(r"\bby \(([^)]*)\)(.*)", query):
            name = METRIC.search(rest).group(0)
            for label in (l.strip() for l in labels.split(",")):
                if label not in ("instance", "job") and name in live_series:
                    assert any(label in s for s in live_series[name]), (query, label)
