#!/usr/bin/env bash
# Check the documentation and the package (CI runs this after
# scripts/test.sh):
#
#   links         every relative link and path of README.md, docs/,
#                 benchmarks/, guides/ and the docstrings resolves, anchors
#                 included, and the package page has no relative link
#                 (scripts/check_links.py);
#   site          the site builds with no warning: `mkdocs build --strict`
#                 (mkdocs.yml: the API reference from the docstrings, links
#                 between pages and their anchors);
#   package       `python -m build` makes the sdist and the wheel, holding
#                 what they should;
#   package page  `twine check --strict`: PyPI renders the package page.
#
# The tools are pinned in docs/requirements.txt and installed into
# .venv-docs/ (re)created whenever that file changes; nothing else is
# installed (the API reference is read from the source, not imported).
# Every check runs even if one before it failed; the exit status is 1 if any
# failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
start=$(date +%s)

if ! cmp -s docs/requirements.txt .venv-docs/requirements.txt; then
    rm -rf .venv-docs
    "$PYTHON" -m venv .venv-docs \
        && .venv-docs/bin/python -m pip install --quiet --disable-pip-version-check \
            -r docs/requirements.txt \
        && cp docs/requirements.txt .venv-docs/ \
        || { echo "setting up .venv-docs failed"; rm -rf .venv-docs; exit 1; }
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
check() {  # name, command...: run one check, count it
    local name=$1
    shift
    echo "=== $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        echo "FAILED: $name"
        failed=$((failed + 1))
    fi
}

check_dist() {  # what the sdist and the wheel hold
    .venv-docs/bin/python - "$TMP/dist" <<'EOF'
import glob, os, sys, tarfile, zipfile

dist = sys.argv[1]
(sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
(wheel,) = glob.glob(os.path.join(dist, "*.whl"))
with tarfile.open(sdist) as f:
    sdist_files = {name.split("/", 1)[1] for name in f.getnames() if "/" in name}
with zipfile.ZipFile(wheel) as f:
    wheel_files = set(f.namelist())
problems = [f"sdist lacks {name}" for name in
            ("LICENSE", "pyproject.toml", "docs/pypi.md", "keras_snr/__init__.py")
            if name not in sdist_files]
problems += [f"sdist holds {name}" for name in sorted(sdist_files)
             if name.split("/")[0] in ("benchmarks", "tests", "guides", "scripts")]
problems += [f"wheel holds {name}" for name in sorted(wheel_files)
             if not name.startswith("keras_snr/") and ".dist-info/" not in name]
if "keras_snr/__init__.py" not in wheel_files:
    problems.append("wheel lacks keras_snr/__init__.py")
for problem in problems:
    print(problem)
print(f"{os.path.basename(sdist)}: {len(sdist_files)} entries, "
      f"{os.path.getsize(sdist) // 1024} KiB; {os.path.basename(wheel)}: "
      f"{len(wheel_files)} files, {os.path.getsize(wheel) // 1024} KiB")
sys.exit(1 if problems else 0)
EOF
}

build_dist() {  # the package, with the pinned setuptools of .venv-docs
    .venv-docs/bin/python -m build --no-isolation --outdir "$TMP/dist" . > "$TMP/build.log" 2>&1 \
        || { cat "$TMP/build.log"; return 1; }
    check_dist
}

check "links" .venv-docs/bin/python scripts/check_links.py
check "site" .venv-docs/bin/mkdocs build --strict --quiet --site-dir "$TMP/site"
check "package" build_dist
check "package page" .venv-docs/bin/twine check --strict "$TMP"/dist/*

echo "check_docs took $(( $(date +%s) - start )) s"
echo "check_docs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
