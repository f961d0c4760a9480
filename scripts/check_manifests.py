"""What schemas cannot see in rendered manifests (one overlay per file).

Checks that selectors match the pod labels they mean, that every port a
probe, Service, NetworkPolicy or ServiceMonitor names exists on the
container and agrees with the binary's defaults, that gRPC probe ports are
numeric, that the HPA and PDB target the Deployment, that the grace period
outlasts preStop + drain delay + drain deadline, that every container has
requests and limits, that names are valid, and that prod pins images by
digest. Usage: check_manifests.py BINARY_HELP_FILE OVERLAY.yaml...
"""

import re
import sys

import yaml

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


def check(path, defaults):
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

    [deployment] = by_kind["Deployment"]
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

    for c in pod["containers"]:
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

    for service in by_kind.get("Service", []):
        chosen = service["spec"]["selector"]
        if any(pod_labels.get(k) != v for k, v in chosen.items()):
            problems.append(f"Service/{service['metadata']['name']} selects no conduit pod")
        for p in service["spec"]["ports"]:
            if port_of(p.get("targetPort", p["port"])) not in numbers:
                problems.append(f"Service port {p['name']}: target {p.get('targetPort')} is not a container port")
    service_ports = {p["name"] for s in by_kind.get("Service", []) for p in s["spec"]["ports"]}
    for monitor in by_kind.get("ServiceMonitor", []):
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] != "admin" or endpoint.get("path") != "/metrics":
                problems.append("the ServiceMonitor must scrape /metrics on the admin port")
            if endpoint["port"] not in service_ports:
                problems.append(f"ServiceMonitor port {endpoint['port']} is not a Service port")
    templates = [d["spec"]["template"]["metadata"].get("labels", {}) for d in docs if d["kind"] in ("Deployment", "Job")]
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
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        if not {"Resource", "Pods"} <= kinds:
            problems.append("the HPA must scale on CPU and on the per-pod latency metric")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        chosen = pdb["spec"]["selector"]["matchLabels"]
        if any(pod_labels.get(k) != v for k, v in chosen.items()):
            problems.append("the PDB selects no conduit pod")

    images = [c["image"] for doc in docs for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
    for image in images:
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            problems.append(f"image {image} has no pinned tag")
        if "/prod" in path and "@sha256:" not in image:
            problems.append(f"prod image {image} is not pinned by digest")
    return problems


def main():
    defaults = binary_defaults(open(sys.argv[1]).read())
    for key in ("CONDUIT_LISTEN", "CONDUIT_ADMIN_LISTEN", "DRAIN_DELAY", "DRAIN_TIMEOUT"):
        if key not in defaults:
            sys.exit(f"the binary's --help gives no default for {key}")
    failed = False
    for path in sys.argv[2:]:
        problems = check(path, defaults)
        for problem in problems:
            print(f"{path}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"-- {path}: selectors, ports, probes, grace period, limits, names and images agree")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
