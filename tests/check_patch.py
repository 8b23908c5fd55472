"""Apply calmplane's patches with an independent RFC 6902 implementation.

Used by tests/policies.rs and tests/http_api.rs through PyChecks
(tests/support/pychecks.rs). The Rust side writes, for each case NAME in DIR:

    NAME.orig.json   the object as admitted
    NAME.patch.json  the JSON Patch calmplane answered
    NAME.want.json   the object calmplane says the patch produces

This script applies the patch to the original with Python `jsonpatch` and
requires the result to equal the wanted object exactly: JSON types count
(`"2"` is not `2`, `1` is not `1.0` or `true`), key order does not.

Usage: check_patch.py DIR    exit 0 when every case passes, 1 otherwise
"""

import json
import os
import sys

import jsonpatch


def canonical(value):
    # json.dumps keeps the distinctions Python's == erases (1 == True == 1.0).
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(directory):
    names = sorted(
        n[: -len(".orig.json")] for n in os.listdir(directory) if n.endswith(".orig.json")
    )
    if not names:
        print(f"no cases in {directory}", file=sys.stderr)
        return 1
    failures = 0
    for name in names:
        base = os.path.join(directory, name)
        orig = load(base + ".orig.json")
        patch = load(base + ".patch.json")
        want = load(base + ".want.json")
        if not isinstance(patch, list) or not patch:
            print(f"{name}: patch is not a non-empty JSON array", file=sys.stderr)
            failures += 1
            continue
        try:
            got = jsonpatch.apply_patch(orig, patch, in_place=False)
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            print(f"{name}: jsonpatch cannot apply the patch: {e!r}", file=sys.stderr)
            failures += 1
            continue
        if canonical(got) != canonical(want):
            print(
                f"{name}: jsonpatch result differs from calmplane's object\n"
                f"  got:  {canonical(got)}\n  want: {canonical(want)}",
                file=sys.stderr,
            )
            failures += 1
    print(f"check_patch: {len(names) - failures}/{len(names)} cases applied identically")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
