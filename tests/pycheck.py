"""Independent checks for calmplane's patches: the one Python checker of the
tests, run by tests/corpus.rs and by PyChecks (crates/testkit/src/pychecks.rs,
used by tests/policies.rs and tests/http_api.rs).

Written against other people's implementations on purpose:

* YAML is read with PyYAML (YAML 1.1, as kubectl reads it: `0640` is octal),
  so the corpus reaches the webhook the way `kubectl apply` would send it;
* patches are applied with `jsonpatch` (RFC 6902, Python), not our json-patch
  crate, and the result must equal calmplane's object exactly: JSON types
  count (`"2"` is not `2`, `1` is not `1.0` or `true`), key order does not;
* patched objects are validated with `kubernetes-validate --strict` schemas.

Usage:
    pycheck.py load CORPUS_DIR OUT.json   # every document of every file, as JSON
    pycheck.py check CASES.json           # apply + validate; exit 1 on any failure

CASES.json is a list of {"name", "original", "patch", "patched", "validate"}:
`patch` applied to `original` must give `patched`, and `validate` says how the
patched object is validated:

    "none"  not at all (placeholder-filled round-trip fixtures);
    "new"   no schema error that `original` did not already have (real
            upstream manifests: their templating placeholders are not ours);
    "all"   no schema error at all (objects a test wrote itself).
"""

import datetime
import json
import os
import re
import sys

import jsonpatch
import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

K8S_VERSION = "1.36.0"


def _value_constructor(loader, node):
    # A plain `=` is a valid string in Kubernetes manifests; PyYAML would
    # otherwise treat it as the obscure `value` tag (pyyaml issue 89).
    return loader.construct_scalar(node)


yaml.SafeLoader.add_constructor("tag:yaml.org,2002:value", _value_constructor)


def _json_default(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


# The attribution file beside the fixtures: documentation, not a fixture.
SOURCES = "SOURCES.md"


def load(corpus_dir, out_path):
    docs = []
    for name in sorted(os.listdir(corpus_dir)):
        if name == SOURCES:
            continue
        path = os.path.join(corpus_dir, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if name.endswith(".json"):
            items = [json.loads(text)]
        else:
            items = [d for d in yaml.safe_load_all(text) if d is not None]
        for index, obj in enumerate(items):
            docs.append({"file": name, "index": index, "object": obj})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(docs, f, default=_json_default)
    print(f"loaded {len(docs)} documents from {corpus_dir}")


_validators = {}


def _validator(obj):
    """A Draft 2020-12 validator for obj's kind, built as kubernetes-validate builds it."""
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    key = (obj["kind"].lower(), api_version)
    if key not in _validators:
        version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(K8S_VERSION)][-1]
        schema_dir = f"v{version}-local-strict"
        schema = kv.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{key[0]}-{key[1]}.json", K8S_VERSION
        )
        defs = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", K8S_VERSION)
        registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
        _validators[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return _validators[key]


def schema_errors(obj):
    return {
        ("/".join(str(p) for p in e.absolute_path), e.message)
        for e in _validator(obj).iter_errors(obj)
    }


def canonical(value):
    # json.dumps keeps the distinctions Python's == erases (1 == True == 1.0).
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


VALIDATE = ("none", "new", "all")


def check(cases_path):
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    if not cases:
        print(f"no cases in {cases_path}")
        return 1
    failures = []
    applied = validated = 0
    for case in cases:
        name = case["name"]
        original, ops, expected = case["original"], case["patch"], case["patched"]
        validate = case["validate"]
        if validate not in VALIDATE:
            failures.append(f"{name}: validate must be one of {VALIDATE}, not {validate!r}")
            continue
        if not isinstance(ops, list) or not ops:
            failures.append(f"{name}: patch is not a non-empty JSON array")
            continue
        try:
            patched = jsonpatch.apply_patch(original, ops)
        except Exception as e:  # any failure to apply is a defect
            failures.append(f"{name}: python jsonpatch cannot apply the patch: {e!r}")
            continue
        applied += 1
        if canonical(patched) != canonical(expected):
            failures.append(
                f"{name}: python jsonpatch result differs from the Rust result\n"
                f"  python: {canonical(patched)}\n  rust:   {canonical(expected)}"
            )
            continue
        if validate == "none":
            continue
        try:
            errors = schema_errors(patched)
            if validate == "new":
                # Errors the manifest already had (placeholder values in
                # templated upstream files) are not ours; every new error is.
                errors -= schema_errors(original)
        except Exception as e:  # no schema for the kind is a failure, not a skip
            failures.append(f"{name}: kubernetes-validate --strict ({K8S_VERSION}) cannot validate it: {e!r}")
            continue
        validated += 1
        for path, message in sorted(errors):
            failures.append(f"{name}: kubernetes-validate --strict ({K8S_VERSION}): {path}: {message}")
    for failure in failures:
        print("FAIL", failure)
    print(f"pycheck: {applied} patches applied with python jsonpatch, {validated} objects validated against Kubernetes {K8S_VERSION} (strict), {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    else:
        sys.exit(__doc__)
