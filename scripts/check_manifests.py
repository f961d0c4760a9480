"""What schemas cannot see in rendered manifests (one rendering per file).

Checks that selectors match the pod labels they mean, that every port a
probe, Service, NetworkPolicy or ServiceMonitor names exists on the
container and agrees with the binary's defaults, that gRPC probe ports are
numeric, that readiness tolerates one slow check, that the HPA and PDB
target the Deployment, that the grace period outlasts preStop + drain delay
+ drain deadline, that every container has requests and limits, that names
are valid, that prod pins images by digest; that the schema is migrated by
an init container of the server's own image and any Job is an Argo CD hook
(plain `kubectl apply` cannot change a finished Job); that same-namespace
clients may call the API and TRUSTED_PROXIES names no network wider than a
node's pod range; that every gRPC Ingress has TLS and every TLS host is in
the Certificate of its Secret; that the latency metric the HPA asks for is
the one the adapter rule makes, and that the adapter rule and the alerts
leave out exactly the proto's streaming methods; and the connection budget
(docs/deploying.md): (maxReplicas + maxSurge) replicas' connections plus
the migrations' fit the PostgreSQL server's max_connections (annotation
conduit/postgres-max-connections on the HPA, default 100) less its
superuser reserve and an operators' reserve; with the pgbouncer component,
the pooler's server connections plus one direct connection per pod fit it,
the fleet's pools fit PgBouncer's max_client_conn, the listener and the
migrations bypass the pooler and PgBouncer is set up for sqlx.

A rendering named *--base.yaml is the base without components: it must use
built-in API groups only.

Usage: check_manifests.py BINARY_HELP_FILE RENDERED.yaml...
"""

import configparser
import glob
import ipaddress
import math
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# Server connections no application may use: PostgreSQL's
# superuser_reserved_connections (3 by default), and a reserve for operators,
# backups and exporters.
SUPERUSER_RESERVED = 3
OPERATORS_RESERVE = 5
# Connections a replica holds besides its pools: the health watcher's own.
HEALTH_CONNECTIONS = 1
# Connections the job workers' pool adds to JOB_WORKERS (claims and figures).
WORKER_POOL_EXTRA = 2
BUILT_IN_GROUPS = {"", "apps", "autoscaling", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text).strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    value, unit = int(match.group(1)), match.group(2) or "s"
    return value / 1000 if unit == "ms" else value * {"s": 1, "m": 60, "h": 3600}[unit]


def binary_defaults(help_text):
    """Default values of the binary's settings, from its --help."""
    defaults = {}
    help_text = " ".join(help_text.split())  # clap wraps lines anywhere
    for env, default in re.findall(r"\[env: (\w+)=?[^\]]*\]\s*\[default: ([^\]]+)\]", help_text, re.S):
        defaults[env] = default
    for default, env in re.findall(r"\[default: ([^\]]+)\]\s*\[env: (\w+)", help_text, re.S):
        defaults[env] = default
    return defaults


def streaming_rpcs():
    """Full names of the proto's server-streaming methods."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "proto", "conduit", "**", "*.proto"), recursive=True):
        text = open(path).read()
        package = re.search(r"^package\s+([\w.]+);", text, re.M).group(1)
        for service, body in re.findall(r"^service\s+(\w+)\s*\{(.*?)^\}", text, re.M | re.S):
            for method in re.findall(r"rpc\s+(\w+)\s*\([^)]*\)\s*returns\s*\(\s*stream\b", body):
                names.add(f"/{package}.{service}/{method}")
    return names


def excluded_rpcs(promql):
    """The RPCs a query leaves out with rpc!~"a|b"."""
    match = re.search(r'rpc!~"([^"]*)"', promql)
    return set(match.group(1).split("|")) if match else set()


def adapter_rule():
    values = yaml.safe_load(open(os.path.join(ROOT, "k8s", "components", "prometheus-adapter", "helm-values.yaml")))
    [rule] = values["rules"]["custom"]
    return rule


def surge(deployment, replicas):
    value = deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return int(value)


def check(path, defaults, notes=None):
    problems = []
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        name = doc["metadata"]["name"]
        if not NAME.match(name) or len(name) > 63:
            problems.append(f"{doc['kind']}/{name}: invalid name")
    config = {}
    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"]["name"].startswith("conduit-config"):
            config = cm["data"]
    setting = lambda key: config.get(key, defaults.get(key))  # noqa: E731

    [deployment] = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "conduit"]
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in selector.items()):
        problems.append("Deployment selector does not match its pod labels")
    pod = template["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "conduit"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    numbers = set(ports.values())
    listen = int(str(setting("CONDUIT_LISTEN")).rsplit(":", 1)[1])
    admin = int(str(setting("CONDUIT_ADMIN_LISTEN")).rsplit(":", 1)[1])
    for name, expected in (("http", listen), ("admin", admin)):
        if ports.get(name) != expected:
            problems.append(f"container port {name} is {ports.get(name)}, the service listens on {expected}")
    for env in ("CONDUIT_LISTEN", "CONDUIT_ADMIN_LISTEN"):
        if env in defaults and config.get(env) and config[env].rsplit(":", 1)[1] != defaults[env].rsplit(":", 1)[1]:
            problems.append(f"{env} {config[env]} differs from the binary's default port {defaults[env]}")

    def port_of(ref):
        return ports.get(ref) if isinstance(ref, str) else ref

    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if not probe:
            problems.append(f"no {kind}")
            continue
        if "grpc" in probe:
            if not isinstance(probe["grpc"]["port"], int):
                problems.append(f"{kind}: gRPC probe port must be a number")
            elif probe["grpc"]["port"] != listen:
                problems.append(f"{kind}: gRPC health is served on {listen}")
        for handler in ("httpGet", "tcpSocket"):
            if handler in probe and port_of(probe[handler]["port"]) not in numbers:
                problems.append(f"{kind}: port {probe[handler]['port']} is not a container port")
        if "httpGet" in probe and probe["httpGet"]["path"] not in ("/healthz", "/readyz"):
            problems.append(f"{kind}: {probe['httpGet']['path']} is not a probe endpoint")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("the readiness probe must ask /readyz")

    for c in [c for d in docs if d["kind"] in ("Deployment", "StatefulSet") for c in d["spec"]["template"]["spec"]["containers"]]:
        resources = c.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    problems.append(f"container {c['name']}: no {part}.{resource}")

    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = duration_seconds(setting("DRAIN_DELAY")) + duration_seconds(setting("DRAIN_TIMEOUT"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + drain:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain}")

    # Every Service selects pods of a workload here and targets their ports
    # (the dev overlay's PostgreSQL and Redis too).
    workloads = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for service in by_kind.get("Service", []):
        chosen = service["spec"]["selector"]
        selected = [t for t in workloads if all(t["metadata"]["labels"].get(k) == v for k, v in chosen.items())]
        if not selected:
            problems.append(f"Service/{service['metadata']['name']} selects no pod")
            continue
        named = {p.get("name"): p["containerPort"] for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for p in service["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if (named.get(target) if isinstance(target, str) else target) not in set(named.values()):
                problems.append(f"Service port {p['name']}: target {target} is not a container port")
    conduit_services = [s for s in by_kind.get("Service", []) if s["spec"]["selector"].items() <= pod_labels.items()]
    if not conduit_services:
        problems.append("no Service selects the conduit pods")
    service_ports = {p["name"] for s in conduit_services for p in s["spec"]["ports"]}
    for monitor in by_kind.get("ServiceMonitor", []):
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] != "admin" or endpoint.get("path") != "/metrics":
                problems.append("the ServiceMonitor must scrape /metrics on the admin port")
            if endpoint["port"] not in service_ports:
                problems.append(f"ServiceMonitor port {endpoint['port']} is not a Service port")
    templates = [d["spec"]["template"]["metadata"].get("labels", {}) for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    for policy in by_kind.get("NetworkPolicy", []):
        chosen = policy["spec"]["podSelector"].get("matchLabels", {})
        selects = lambda labels: all(labels.get(k) == v for k, v in chosen.items())  # noqa: E731
        if not any(selects(labels) for labels in templates):
            problems.append(f"NetworkPolicy/{policy['metadata']['name']} selects no pod of ours")
        if not selects(pod_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if port_of(p["port"]) not in numbers:
                    problems.append(f"NetworkPolicy allows port {p['port']}, which the container does not open")
    if not any(
        all(pod_labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
        for p in by_kind.get("NetworkPolicy", [])
    ):
        problems.append("no NetworkPolicy selects the conduit pods")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
            problems.append("the HPA does not target the Deployment")
        if not any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]):
            problems.append("the HPA must scale on CPU")
        rule = adapter_rule()
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] != rule["name"]["as"]:
                problems.append(f"the HPA asks for {metric['pods']['metric']['name']}, the adapter rule makes {rule['name']['as']}")
        if excluded_rpcs(rule["metricsQuery"]) != streaming_rpcs():
            problems.append(f"the adapter rule must leave out exactly the streaming RPCs {sorted(streaming_rpcs())}")
        problems += connection_budget(hpa, deployment, setting, by_kind, notes if notes is not None else [])
    if not by_kind.get("HorizontalPodAutoscaler"):
        problems.append("no HorizontalPodAutoscaler")
    for rules in by_kind.get("PrometheusRule", []):
        for group in rules["spec"]["groups"]:
            for rule in group["rules"]:
                if "request_duration_seconds" in rule["expr"] and excluded_rpcs(rule["expr"]) != streaming_rpcs():
                    problems.append(f"alert {rule['alert']} must leave out exactly the streaming RPCs")

    # Migrations: an init container of the server's image under plain
    # kubectl; a Job only as an Argo CD hook, which Argo CD replaces.
    inits = [c for c in pod.get("initContainers", []) if c.get("args") == ["migrate"]]
    if len(inits) != 1 or inits[0]["image"] != container["image"]:
        problems.append("the Deployment must migrate in one init container of its own image (args: [migrate])")
    for job in by_kind.get("Job", []):
        if "argocd.argoproj.io/hook" not in job["metadata"].get("annotations", {}):
            problems.append(f"Job/{job['metadata']['name']} is not an Argo CD hook: kubectl apply cannot update it")

    readiness = container.get("readinessProbe", {})
    if readiness.get("failureThreshold", 3) < 2:
        problems.append("the readiness probe must tolerate one slow check (failureThreshold >= 2)")
    proxies = list(filter(None, str(setting("TRUSTED_PROXIES") or "").split(",")))
    if by_kind.get("Ingress") and not proxies:
        problems.append("an Ingress without TRUSTED_PROXIES: every client behind it shares one rate-limit key")
    for network in proxies:
        network = ipaddress.ip_network(network.strip(), strict=False)
        if network.prefixlen < (24 if network.version == 4 else 64):
            problems.append(f"TRUSTED_PROXIES {network} is wider than a node's pod range: name the proxies' pods")

    same_namespace = False
    for policy in by_kind.get("NetworkPolicy", []):
        for rule in policy["spec"].get("ingress", []):
            if any(port_of(p["port"]) == listen for p in rule.get("ports", [])) and {"podSelector": {}} in rule.get("from", []):
                same_namespace = True
    if not same_namespace:
        problems.append("no NetworkPolicy admits same-namespace clients to the API port")

    certificates = {c["spec"]["secretName"]: set(c["spec"]["dnsNames"]) for c in by_kind.get("Certificate", [])}
    for ingress in by_kind.get("Ingress", []):
        name = ingress["metadata"]["name"]
        hosts = {r["host"] for r in ingress["spec"]["rules"]}
        tls = {h: t.get("secretName") for t in ingress["spec"].get("tls", []) for h in t["hosts"]}
        annotations = ingress["metadata"].get("annotations", {})
        if annotations.get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC" and not hosts <= set(tls):
            problems.append(f"Ingress/{name}: gRPC is served to clients over TLS only; {sorted(hosts - set(tls))} has none")
        for host, secret in tls.items():
            if certificates and host not in certificates.get(secret, set()):
                problems.append(f"Ingress/{name}: TLS host {host} is not in a Certificate for Secret {secret}")
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                if p["backend"]["service"]["port"].get("name") not in service_ports:
                    problems.append(f"Ingress/{name}: backend port is not a Service port")

    if path.endswith("--base.yaml"):
        for doc in docs:
            group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
            if group not in BUILT_IN_GROUPS:
                problems.append(f"the base uses {doc['kind']} ({doc['apiVersion']}), not a built-in API group")
    budgets = by_kind.get("PodDisruptionBudget", [])
    chosen_by = lambda pdb, labels: all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())  # noqa: E731
    for pdb in budgets:
        if not any(chosen_by(pdb, labels) for labels in templates):
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']} selects no pod of ours")
    if budgets and not any(chosen_by(pdb, pod_labels) for pdb in budgets):
        problems.append("no PDB selects the conduit pods")

    pods = [doc.get("spec", {}).get("template", {}).get("spec", {}) for doc in docs]
    images = [c["image"] for p in pods for c in p.get("containers", []) + p.get("initContainers", [])]
    for image in images:
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            problems.append(f"image {image} has no pinned tag")
        if "/prod" in path and "@sha256:" not in image:
            problems.append(f"prod image {image} is not pinned by digest")
    return problems


def pgbouncer_settings(by_kind):
    """The pgbouncer component's Deployment and its pgbouncer.ini, if on."""
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "conduit-pgbouncer"]
    if not deployments:
        return None, None
    [config] = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"].startswith("conduit-pgbouncer")]
    parser = configparser.ConfigParser(allow_no_value=True, comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    parser.read_string(config["data"]["pgbouncer.ini"])
    return deployments[0], parser["pgbouncer"]


def secret_key(container, env):
    for variable in container.get("env", []):
        if variable["name"] == env:
            return variable.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
    return None


def read_budget(hpa, setting, pods, fleet, notes):
    """Every pod's replica pool on one replica (a read-only Service may send
    them all to one) within that replica's max_connections less the same
    reserves: READ_DATABASE_URL is an optional Secret key, so it is counted
    whether set or not."""
    pool = int(setting("READ_DB_MAX_CONNECTIONS"))
    server = int(hpa["metadata"].get("annotations", {}).get("conduit/replica-max-connections", "100"))
    allowed = server - SUPERUSER_RESERVED - OPERATORS_RESERVE
    need = pods * pool
    notes.append(f"read replica budget: {fleet} x {pool} = {need} of {allowed} (a replica's max_connections {server})")
    return [f"read replica budget: {need} connections at maxReplicas, {allowed} available on a replica"] if need > allowed else []


def connection_budget(hpa, deployment, setting, by_kind, notes):
    """(maxReplicas + maxSurge) replicas' connections plus the migrations'
    within the server's max_connections less its reserves; behind the
    pgbouncer component, the pooler's server connections plus each
    replica's direct listener, and the replicas' pools within what
    PgBouncer accepts."""
    pool = int(setting("DB_MAX_CONNECTIONS"))
    workers = int(setting("JOB_WORKERS"))
    per_replica = pool + (workers + WORKER_POOL_EXTRA if workers else 0) + HEALTH_CONNECTIONS
    replicas = hpa["spec"]["maxReplicas"]
    # A terminating pod keeps its connections while it drains. With
    # minReadySeconds at least the grace period, the next old pod is
    # stopped only once the previous one is gone: one drains at a time;
    # otherwise every old pod may.
    template = deployment["spec"]["template"]["spec"]
    draining = 1 if deployment["spec"].get("minReadySeconds", 0) >= template.get("terminationGracePeriodSeconds", 30) else replicas
    pods = replicas + surge(deployment, replicas) + draining
    # One init container per pod starting at once (the surge). The Argo CD
    # hook's Job runs before the rollout starts, when fewer pods run.
    migrations = surge(deployment, replicas)
    server = int(hpa["metadata"].get("annotations", {}).get("conduit/postgres-max-connections", "100"))
    allowed = server - SUPERUSER_RESERVED - OPERATORS_RESERVE
    reserves = f"(max_connections {server} - {SUPERUSER_RESERVED} superuser - {OPERATORS_RESERVE} operators)"
    fleet = f"{pods} pods ({replicas} + {pods - replicas - draining} surge + {draining} draining)"
    problems = read_budget(hpa, setting, pods, fleet, notes)
    bouncer, ini = pgbouncer_settings(by_kind)
    if bouncer is None:
        need = pods * per_replica + migrations
        notes.append(
            f"connection budget: {fleet} x ({pool} pool + {per_replica - pool - HEALTH_CONNECTIONS} workers'"
            f" + {HEALTH_CONNECTIONS} health) + {migrations} migration = {need} of {allowed} {reserves}"
        )
        if need > allowed:
            problems.append(f"connection budget: {need} connections at maxReplicas, {allowed} available")
        return problems

    [container] = [c for c in template["containers"] if c["name"] == "conduit"]
    [migrate] = [c for c in template.get("initContainers", []) if c.get("args") == ["migrate"]] or [{}]
    direct = secret_key(container, "DATABASE_DIRECT_URL")
    if not direct or direct != secret_key(migrate, "DATABASE_URL"):
        problems.append("behind PgBouncer, DATABASE_DIRECT_URL must be the migrations' direct DATABASE_URL")
    if secret_key(container, "DATABASE_URL") in (None, direct):
        problems.append("behind PgBouncer, the server's DATABASE_URL must name the pooler")
    if ini.get("pool_mode", "session") == "transaction":
        if int(ini.get("max_prepared_statements", "0")) <= 0:
            problems.append("transaction pooling needs max_prepared_statements (sqlx prepares every statement by name)")
        ignored = {p.strip() for p in ini.get("ignore_startup_parameters", "").split(",")}
        if not {"options", "extra_float_digits"} <= ignored:
            problems.append("PgBouncer must ignore the startup parameters options and extra_float_digits, which conduit sends")
    lease = duration_seconds(setting("JOB_LEASE"))
    if workers and int(ini.get("idle_transaction_timeout", "0")) < lease + 10:
        problems.append("PgBouncer's idle_transaction_timeout must outlast JOB_LEASE + 10 s")
    per_pool = int(ini.get("default_pool_size", "20")) + int(ini.get("reserve_pool_size", "0"))
    if int(ini.get("max_db_connections", "0")):
        per_pool = min(per_pool, int(ini["max_db_connections"]))
    bouncers = bouncer["spec"].get("replicas", 1) + surge(bouncer, bouncer["spec"].get("replicas", 1))
    listeners = pods  # one direct connection per pod: its migration, then its listener
    need = bouncers * per_pool + listeners
    clients = pods * per_replica
    notes.append(
        f"connection budget behind PgBouncer: {bouncers} PgBouncer pods (with a rollout's surge) x {per_pool} server"
        f" connections + {fleet} x 1 direct (listener, or migration before it) = {need} of {allowed} {reserves};"
        f" {fleet} x {per_replica} pooled = {clients} client connections, at most {ini.get('max_client_conn', '100')} per PgBouncer"
    )
    if need > allowed:
        problems.append(f"connection budget: {need} server connections at maxReplicas behind PgBouncer, {allowed} available")
    if clients > int(ini.get("max_client_conn", "100")):
        problems.append(f"PgBouncer's max_client_conn is below the {clients} client connections of the fleet at maxReplicas")
    return problems


def main():
    defaults = binary_defaults(open(sys.argv[1]).read())
    for key in ("CONDUIT_LISTEN", "CONDUIT_ADMIN_LISTEN", "DRAIN_DELAY", "DRAIN_TIMEOUT", "DB_MAX_CONNECTIONS", "JOB_WORKERS", "JOB_LEASE", "READ_DB_MAX_CONNECTIONS"):
        if key not in defaults:
            sys.exit(f"the binary's --help gives no default for {key}")
    failed = False
    for path in sys.argv[2:]:
        notes = []
        problems = check(path, defaults, notes)
        for note in notes:
            print(f"   {os.path.basename(path)}: {note}")
        for problem in problems:
            print(f"{path}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"-- {path}: selectors, ports, probes, migrations, TLS, metrics, budget, limits, names and images agree")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
