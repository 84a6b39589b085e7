"""Static checks of the production deployment files (no Docker engine or Envoy binary here):
Debian's docker-compose must accept docker-compose.yml, and envoy.yaml must route grpc-web
with CORS over both flashsale nodes with HTTP/2 upstreams and gRPC health checks."""

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_compose_file_is_accepted_and_complete():
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: run scripts/test, which installs it"
    env = dict(os.environ, JWT_SECRET="x" * 32)
    out = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert {"mongo", "redis", "flashsale1", "flashsale2", "envoy"} <= set(services)
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
