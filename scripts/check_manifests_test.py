"""Each mistake check_manifests.py exists to catch, made in a good rendering,
is caught, and the good rendering passes. Usage: check_manifests_test.py
BINARY_HELP_FILE RENDERING_WITH_EVERY_COMPONENT.yaml
"""

import copy
import os
import sys
import tempfile

import yaml

import check_manifests


def one(docs, kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def container(docs):
    return one(docs, "Deployment", "conduit")["spec"]["template"]["spec"]["containers"][0]


def no_grpc_tls(docs):
    one(docs, "Ingress", "conduit-grpc")["spec"].pop("tls")


def wide_proxies(docs):
    one(docs, "ConfigMap", "conduit-config")["data"]["TRUSTED_PROXIES"] = "10.0.0.0/8"


def plain_job(docs):
    job = copy.deepcopy(one(docs, "Job"))
    job["metadata"] = {"name": "conduit-migrate-by-hand"}
    docs.append(job)


def too_many_replicas(docs):
    one(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] = 40


def impatient_readiness(docs):
    container(docs)["readinessProbe"]["failureThreshold"] = 1


def no_migration(docs):
    one(docs, "Deployment", "conduit")["spec"]["template"]["spec"].pop("initContainers")


def certificate_missing_a_host(docs):
    one(docs, "Certificate")["spec"]["dnsNames"].pop()


def other_latency_metric(docs):
    for metric in one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]:
        if metric["type"] == "Pods":
            metric["pods"]["metric"]["name"] = "conduit_latency_p95"


def alert_timing_a_stream(docs):
    for group in one(docs, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace("|/conduit.v1.Notifications/WatchNotifications", "")


def no_same_namespace_callers(docs):
    for rule in one(docs, "NetworkPolicy", "conduit")["spec"]["ingress"]:
        rule["from"] = [f for f in rule["from"] if f != {"podSelector": {}}]


def no_trusted_proxies(docs):
    one(docs, "ConfigMap", "conduit-config")["data"]["TRUSTED_PROXIES"] = ""


def every_old_pod_may_drain(docs):
    one(docs, "Deployment", "conduit")["spec"].pop("minReadySeconds")


def wrong_probe_port(docs):
    container(docs)["readinessProbe"]["httpGet"]["port"] = 9999


def pgbouncer_ini(docs, old, new):
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("conduit-pgbouncer"))
    assert old in config["data"]["pgbouncer.ini"], old
    config["data"]["pgbouncer.ini"] = config["data"]["pgbouncer.ini"].replace(old, new)


def listener_through_the_pooler(docs):
    container(docs)["env"] = [e for e in container(docs)["env"] if e["name"] != "DATABASE_DIRECT_URL"]


def migrations_through_the_pooler(docs):
    [migrate] = one(docs, "Deployment", "conduit")["spec"]["template"]["spec"]["initContainers"]
    migrate["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "POOLED_DATABASE_URL"


def no_prepared_statements(docs):
    pgbouncer_ini(docs, "max_prepared_statements = 200", "max_prepared_statements = 0")


def too_few_client_connections(docs):
    pgbouncer_ini(docs, "max_client_conn = 400", "max_client_conn = 100")


def big_replica_pools(docs):
    one(docs, "ConfigMap", "conduit-config")["data"]["READ_DB_MAX_CONNECTIONS"] = "16"


MISTAKES = [
    (big_replica_pools, "read replica budget"),
    (listener_through_the_pooler, "DATABASE_DIRECT_URL must be"),
    (migrations_through_the_pooler, "DATABASE_DIRECT_URL must be"),
    (no_prepared_statements, "max_prepared_statements"),
    (too_few_client_connections, "max_client_conn"),
    (no_grpc_tls, "gRPC is served to clients over TLS only"),
    (wide_proxies, "wider than a node's pod range"),
    (plain_job, "is not an Argo CD hook"),
    (too_many_replicas, "connection budget"),
    (impatient_readiness, "tolerate one slow check"),
    (no_migration, "init container"),
    (certificate_missing_a_host, "is not in a Certificate"),
    (other_latency_metric, "the adapter rule makes"),
    (alert_timing_a_stream, "must leave out exactly the streaming RPCs"),
    (no_same_namespace_callers, "same-namespace clients"),
    (wrong_probe_port, "is not a container port"),
    (no_trusted_proxies, "shares one rate-limit key"),
    (every_old_pod_may_drain, "connection budget"),
]


def problems_of(docs, defaults, name):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, name)
        yaml.safe_dump_all(docs, open(path, "w"))
        return check_manifests.check(path, defaults)


def main():
    defaults = check_manifests.binary_defaults(open(sys.argv[1]).read())
    good = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
    failures = []
    if problems := problems_of(good, defaults, "good.yaml"):
        failures.append(f"the good rendering: {problems}")
    for mistake, expected in MISTAKES:
        docs = copy.deepcopy(good)
        mistake(docs)
        problems = problems_of(docs, defaults, "mistaken.yaml")
        if not any(expected in p for p in problems):
            failures.append(f"{mistake.__name__}: expected a problem with {expected!r}, got {problems}")
    # A base that needs a CRD.
    docs = [d for d in copy.deepcopy(good) if d["kind"] != "ServiceMonitor"] + [one(good, "ServiceMonitor")]
    if not any("not a built-in API group" in p for p in problems_of(docs, defaults, "x--base.yaml")):
        failures.append("a ServiceMonitor in the base was not refused")
    for failure in failures:
        print(f"check_manifests_test: {failure}")
    print(f"-- check_manifests.py catches {len(MISTAKES) + 1 - len(failures)} of {len(MISTAKES) + 1} mistakes")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
