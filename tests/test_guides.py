"""Every guide in guides/ runs top to bottom with `--quick` on this backend.

Guides are discovered by globbing `guides/*.py`, so a new guide is covered
without touching this file. Each runs as a script (`__main__`) in a fresh
process with the current `KERAS_BACKEND`, from a temporary directory (so
files a guide writes land there). No assertions on speed or on the numbers a
guide prints: its own code checks what it claims.
"""

import ast
import os
import re

import pytest
from conftest import BACKEND, TESTS_DIR, run_python

GUIDES_DIR = os.path.join(os.path.dirname(TESTS_DIR), "guides")
GUIDES = sorted(
    os.path.join(GUIDES_DIR, name)
    for name in os.listdir(GUIDES_DIR)
    if name.endswith(".py") and not name.startswith("_")
) if os.path.isdir(GUIDES_DIR) else []
IDS = [os.path.basename(path) for path in GUIDES]
HEADER_FIELDS = ("Title", "Author", "Date created", "Last modified", "Description")


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_runs_in_quick_mode(path, tmp_path):
    code = f"""
        import runpy, sys
        sys.argv = [{path!r}, "--quick"]
        runpy.run_path({path!r}, run_name="__main__")
    """
    run_python(code, backend=BACKEND, cwd=str(tmp_path), timeout=900)


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_follows_keras_io_format(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    header = ast.get_docstring(tree, clean=False) or ""
    fields = dict(
        line.split(":", 1) for line in header.strip().splitlines() if ":" in line
    )
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for name in HEADER_FIELDS:
        assert fields.get(name), f"header docstring lacks '{name}:'"
    assert fields["Author"] == "keras_snr contributors"
    for name in ("Date created", "Last modified"):
        assert re.fullmatch(r"\d{4}/\d{2}/\d{2}", fields[name]), (name, fields[name])
    assert fields["Description"].endswith("."), "Description must end with a full stop"
    # The backend is chosen (overridably) before Keras is imported.
    setdefault = source.find('os.environ.setdefault("KERAS_BACKEND"')
    import_keras = re.search(r"^import keras\b", source, re.M)
    assert setdefault != -1 and import_keras and setdefault < import_keras.start()
    assert "--quick" in source, "guides take a --quick flag for CI"
