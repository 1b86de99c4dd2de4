"""Static checks of the deployment files (no Docker engine or cluster here):
the YAML parses, every reference resolves, and every command and setting
they use is one the komunikator binary documents in its --help.

usage: validate.py PATH_TO_KOMUNIKATOR_BINARY
"""
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = sys.argv[1]
checks = 0
failures = []


def check(ok, what):
    global checks
    checks += 1
    if not ok:
        failures.append(what)


def help_text(*args):
    return subprocess.run([BINARY, *args, "--help"], capture_output=True, text=True, check=True).stdout


commands = set(re.findall(r"^  (\w+)\s", help_text(), re.M)) - {"help"}
check({"api", "gateway", "persister", "presence", "migrate", "all"} <= commands, f"commands: {commands}")
env_vars = set()
for command in commands:
    env_vars |= set(re.findall(r"env: (\w+)", help_text(command)))

# Kubernetes
k8s = ROOT / "deploy" / "k8s"
kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
docs = []
for resource in kustomization["resources"]:
    path = k8s / resource
    check(path.exists(), f"kustomization lists missing {resource}")
    docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
listed = set(kustomization["resources"])
for path in k8s.glob("*.yaml"):
    if path.name not in listed and path.name not in {"kustomization.yaml", "secret.example.yaml"}:
        failures.append(f"{path.name} is not in kustomization.yaml")
secret = yaml.safe_load((k8s / "secret.example.yaml").read_text())
by_kind = {}
for doc in docs + [secret]:
    check(all(k in doc for k in ("apiVersion", "kind", "metadata")), f"incomplete document {doc}")
    by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

# The OpenTelemetry SDK reads its standard variables itself, so --help does
# not list them. Named one by one, not as OTEL_*, so a misspelt one that
# nothing would read still fails.
OTEL_VARIABLE = re.compile(
    r"OTEL_(SDK_DISABLED|SERVICE_NAME|RESOURCE_ATTRIBUTES|LOG_LEVEL|PROPAGATORS"
    r"|TRACES_SAMPLER(_ARG)?|(TRACES|METRICS|LOGS)_EXPORTER"
    r"|EXPORTER_OTLP(_(TRACES|METRICS|LOGS))?_(ENDPOINT|PROTOCOL|HEADERS|TIMEOUT|COMPRESSION"
    r"|CERTIFICATE|CLIENT_KEY|CLIENT_CERTIFICATE|INSECURE)"
    r"|BSP_(SCHEDULE_DELAY|EXPORT_TIMEOUT|MAX_QUEUE_SIZE|MAX_EXPORT_BATCH_SIZE)"
    r"|(SPAN_|EVENT_|LINK_)?ATTRIBUTE_(COUNT|VALUE_LENGTH)_LIMIT|SPAN_(EVENT|LINK)_COUNT_LIMIT)"
)


def known_setting(key):
    return key in env_vars or OTEL_VARIABLE.fullmatch(key) is not None


for key in list(by_kind["ConfigMap"]["komunikator"]["data"]) + list(secret["stringData"]):
    check(known_setting(key), f"k8s setting {key} is not a komunikator option")

deployments = by_kind["Deployment"]
for name, deployment in deployments.items():
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    check(container["args"][0] in commands, f"{name}: unknown command {container['args']}")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness probe")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness probe")
    # A service waits up to 30 s for a NATS cluster electing its leaders
    # before it listens (STREAM_SETUP_WITHIN): liveness must not count then.
    startup = container.get("startupProbe", {})
    check(startup.get("httpGet", {}).get("path") == "/healthz"
          and startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) > 30,
          f"{name}: a startup probe longer than the 30 s wait for NATS")
    check("resources" in container, f"{name}: resources")
    scrape = deployment["spec"]["template"]["metadata"].get("annotations", {})
    check(scrape.get("prometheus.io/scrape") == "true" and scrape.get("prometheus.io/path") == "/metrics"
          and scrape.get("prometheus.io/port") == str(container["ports"][0]["containerPort"]),
          f"{name}: Prometheus scrape annotations")
job = by_kind["Job"]["komunikator-migrate"]["spec"]["template"]["spec"]["containers"][0]
check(job["args"] == ["migrate"], "migrate job runs `komunikator migrate`")


def selects(selector, deployment):
    return selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


workloads = list(deployments.values()) + list(by_kind.get("StatefulSet", {}).values())
for name, service in by_kind["Service"].items():
    check(any(selects(service["spec"]["selector"], d) for d in workloads), f"service {name} selects nothing")
for name, hpa in by_kind["HorizontalPodAutoscaler"].items():
    check(hpa["spec"]["scaleTargetRef"]["name"] in deployments, f"hpa {name} target")
for name, pdb in by_kind["PodDisruptionBudget"].items():
    check(any(selects(pdb["spec"]["selector"]["matchLabels"], d) for d in workloads), f"pdb {name}")

# NATS: the cluster the services use, on the shipped configuration.
nats_dir = ROOT / "deploy" / "nats"
nats_config = by_kind["ConfigMap"]["nats-config"]["data"]
for file in ("nats.conf", "cluster.conf"):
    check(nats_config.get(file) == (nats_dir / file).read_text(), f"nats-config {file} differs from deploy/nats/{file}")
check("sync_interval: always" in (nats_dir / "nats.conf").read_text(), "nats.conf: JetStream syncs every write")
nats = by_kind["StatefulSet"]["nats"]
check(nats["spec"]["replicas"] == 3, "nats: three servers")
check(nats["spec"]["serviceName"] in by_kind["Service"]
      and by_kind["Service"][nats["spec"]["serviceName"]]["spec"].get("clusterIP") == "None", "nats: headless service")
nats_routes = re.findall(r"nats://(nats-\d)\.nats:6222", (nats_dir / "cluster.conf").read_text())
check(nats_routes == [f"nats-{i}" for i in range(nats["spec"]["replicas"])], f"nats routes {nats_routes}")
settings = by_kind["ConfigMap"]["komunikator"]["data"]
check(settings["NATS_URL"].split(",") == [f"nats://nats-{i}.nats:4222" for i in range(3)], "NATS_URL lists every server")
check(settings.get("NATS_STREAM_REPLICAS") == "3", "streams on all three servers")
check(by_kind["PodDisruptionBudget"]["nats"]["spec"].get("maxUnavailable") == 1, "nats: one server down at a time")
paths = {}
for name, ingress in by_kind["Ingress"].items():
    annotations = ingress["metadata"].get("annotations", {})
    check(annotations.get("nginx.ingress.kubernetes.io/proxy-body-size") == "64k", f"ingress {name}: body limit")
    check(annotations.get("nginx.ingress.kubernetes.io/default-backend") in by_kind["Service"], f"ingress {name}: error backend")
    check("413" in annotations.get("nginx.ingress.kubernetes.io/custom-http-errors", ""), f"ingress {name}: JSON errors")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            check(path["backend"]["service"]["name"] in by_kind["Service"], f"ingress backend {path}")
            paths[path["path"]] = (name, path["backend"]["service"]["name"])
check(paths.get("/socket.io", ("", ""))[1] == "komunikator-gateway" and paths.get("/api", ("", ""))[1] == "komunikator-api", f"ingress routes {paths}")
# Long-polling needs affinity that works without cookies (a page on another
# origin sends none), and only the gateways need it.
gateway_ingress = by_kind["Ingress"][paths["/socket.io"][0]]["metadata"]["annotations"]
check(gateway_ingress.get("nginx.ingress.kubernetes.io/upstream-hash-by") == "$remote_addr", "gateway ingress: affinity by client address")

# docker compose
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose["services"]
for name, service in services.items():
    for dependency in service.get("depends_on", {}):
        check(dependency in services, f"compose {name} depends on unknown {dependency}")
    if service.get("image") == "komunikator:local":
        check(service["command"][0] in commands, f"compose {name}: unknown command")
        for key in service["environment"]:
            check(known_setting(key), f"compose setting {key} is not a komunikator option")
check(sum(1 for s in services.values() if s.get("command") == ["gateway"]) >= 2, "two gateways")
check("./deploy/nats/nats.conf:/etc/nats/nats.conf:ro" in services["nats"].get("volumes", [])
      and services["nats"]["command"] == ["--config", "/etc/nats/nats.conf"], "compose NATS runs deploy/nats/nats.conf")
nginx = (ROOT / "deploy" / "nginx.conf").read_text()
upstream_servers = re.findall(r"server (\w+):\d+([^;]*);", nginx)
check(len(upstream_servers) >= 4, f"nginx upstreams {upstream_servers}")
for host, options in upstream_servers:
    check(host in services, f"nginx upstream {host} is not a compose service")
    check("max_fails=0" in options, f"nginx upstream {host}: passive health checks strand WebSocket clients")
check("client_max_body_size 64k;" in nginx, "nginx: the API's body limit")

if failures:
    print("deploy files: " + "; ".join(failures))
    sys.exit(1)
print(f"deploy files: {checks} checks passed")
