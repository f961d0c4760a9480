"""Validates custom resources in rendered manifests against their CRDs' own
schemas, as strictly as kubernetes-validate --strict treats built-in kinds.

Each CRD's openAPIV3Schema (for the served version an object names) becomes
a JSON schema in which an object lists all the fields it may have (the API
server would silently prune an unknown field, so a misspelt one would be
lost without a word), except where the schema preserves unknown fields.
Every object whose group is not a built-in API group must have a CRD here.

Usage: check_crds.py CRD_DIR MANIFEST.yaml...
"""

import glob
import os
import sys

import jsonschema
import yaml

# Groups a cluster serves without CRDs ("" is the core group).
BUILT_IN = {
    "", "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "apps",
    "authentication.k8s.io", "authorization.k8s.io", "autoscaling", "batch", "certificates.k8s.io",
    "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io", "node.k8s.io", "policy", "rbac.authorization.k8s.io", "resource.k8s.io",
    "scheduling.k8s.io", "storage.k8s.io",
}


def group_of(api_version):
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def strict(schema):
    """A copy of a structural schema in which objects reject unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if "properties" in schema and "additionalProperties" not in schema and not schema.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def load_crds(directory):
    schemas = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        for crd in yaml.safe_load_all(open(path)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served"):
                    continue
                schema = strict(version["schema"]["openAPIV3Schema"])
                # The API server checks metadata itself; the CRD says only "object".
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def main():
    schemas = load_crds(sys.argv[1])
    failed = False
    for path in sys.argv[2:]:
        checked, invalid = 0, 0
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            api_version, kind = doc["apiVersion"], doc["kind"]
            if group_of(api_version) in BUILT_IN:
                continue
            name = f"{path}: {kind}/{doc['metadata']['name']} ({api_version})"
            schema = schemas.get((api_version, kind))
            if schema is None:
                print(f"{name}: no CRD schema in {sys.argv[1]}")
                invalid += 1
                checked += 1
                continue
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            for error in errors:
                print(f"{name} {'/'.join(map(str, error.path))}: {error.message}")
            invalid += bool(errors)
            checked += 1
        failed = failed or bool(invalid)
        print(f"-- {path}: {checked - invalid} of {checked} custom resources valid against their CRDs")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
