"""Every guide in guides/ runs on its own, top to bottom, with `--quick`.

Guides are discovered by globbing `guides/*.py`, so a new guide is covered
without touching this file (and every file there must be a guide: guides
share no helper modules). A keras.io guide runs as one file on Colab or
keras.io, so besides running each one this file checks that it

- follows the keras.io format (header docstring with the keras.io fields,
  `Accelerator` included; backend chosen before Keras is imported; a
  `--quick` flag);
- imports only `keras_snr`, the standard library and public packages:
  nothing else from this repository, no `sys.path` manipulation, no
  `__file__`;
- says in `--help` how long the full run takes on a 2-core CPU and what
  `--quick` does;
- writes nothing into the current directory: figures go to `--out-dir`.

Each runs as a script (`__main__`) in a fresh process with the current
`KERAS_BACKEND`, copied alone into a temporary folder and run from an empty
one. No assertions on speed or on the numbers a guide prints.
"""

import ast
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import BACKEND, TESTS_DIR, run_python

ROOT = os.path.dirname(TESTS_DIR)
GUIDES_DIR = os.path.join(ROOT, "guides")
GUIDES = sorted(glob.glob(os.path.join(GUIDES_DIR, "*.py")))
IDS = [os.path.basename(path) for path in GUIDES]
HEADER_FIELDS = (
    "Title", "Author", "Date created", "Last modified", "Description", "Accelerator",
)
# What a guide may import besides the standard library.
PUBLIC_PACKAGES = {
    "keras_snr", "keras", "numpy", "scipy", "matplotlib", "skimage", "sklearn",
    "jax", "jaxlib", "torch", "tensorflow",
}


def _source(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _writes_files(source):
    return "savefig(" in source


def _imported_modules(tree):
    """(top-level module name, line) of every import; relative ones keep their dots."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield "." * node.level + (node.module or ""), node.lineno
            else:
                yield node.module.split(".")[0], node.lineno


def _repository_modules():
    """Names importable from this repository's folders (other than keras_snr)."""
    names = set()
    for folder in (ROOT, os.path.join(ROOT, "benchmarks"), TESTS_DIR, GUIDES_DIR,
                   os.path.join(ROOT, "scripts")):
        for entry in os.listdir(folder):
            full = os.path.join(folder, entry)
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif os.path.isfile(os.path.join(full, "__init__.py")):
                names.add(entry)
    return names - {"keras_snr"}


def test_guides_found():
    assert GUIDES, f"no guide found in {GUIDES_DIR}"


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_follows_keras_io_format(path):
    source = _source(path)
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
    assert fields["Accelerator"] in ("None", "GPU", "TPU"), fields["Accelerator"]
    # The backend is chosen (overridably) before Keras is imported.
    setdefault = source.find('os.environ.setdefault("KERAS_BACKEND"')
    import_keras = re.search(r"^import keras\b", source, re.M)
    assert setdefault != -1 and import_keras and setdefault < import_keras.start()
    assert "--quick" in source, "guides take a --quick flag for CI"


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_is_self_contained(path):
    """Only keras_snr and public packages: the guide is the code it teaches."""
    source = _source(path)
    imported = list(_imported_modules(ast.parse(source)))
    local = sorted({(name, line) for name, line in imported if name in _repository_modules()})
    assert not local, f"imports code from this repository (not keras_snr): {local}"
    other = sorted({
        (name, line) for name, line in imported
        if name not in PUBLIC_PACKAGES and name not in sys.stdlib_module_names
    })
    assert not other, f"imports something that is neither keras_snr nor a public package: {other}"
    for pattern in ("sys.path", "PYTHONPATH", "importlib", "__import__", "runpy", "__file__"):
        assert pattern not in source, f"a standalone guide does not use {pattern}"


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_help_says_how_long_and_what_quick_does(path):
    source = _source(path)
    result = subprocess.run(
        [sys.executable, path, "--help"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    assert "Full run:" in text and "2-core CPU" in text, text
    assert re.search(r"--quick\s+\S", text), text
    if _writes_files(source):
        assert "--out-dir" in text, text


def _top_level_definitions(path):
    source = _source(path)
    return {
        node.name: ast.get_source_segment(source, node)
        for node in ast.parse(source).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_teaches_the_tested_code(path):
    """A function or class a guide shares by name with `benchmarks/tasks/`
    (where the tests check it) is the same code, so the guide teaches what
    is tested."""
    guide = _top_level_definitions(path)
    for module in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "tasks", "*.py"))):
        for name, code in _top_level_definitions(module).items():
            if name in guide:
                assert guide[name] == code, (
                    f"{name} differs from benchmarks/tasks/{os.path.basename(module)}"
                )


@pytest.mark.parametrize("path", GUIDES, ids=IDS)
def test_guide_runs_in_quick_mode(path, tmp_path):
    alone = tmp_path / "guide"
    alone.mkdir()
    script = str(alone / os.path.basename(path))
    shutil.copy(path, script)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out_dir = str(tmp_path / "out")
    code = f"""
        import runpy, sys
        sys.argv = [{script!r}, "--quick", "--out-dir", {out_dir!r}]
        runpy.run_path({script!r}, run_name="__main__")
    """
    result = run_python(code, backend=BACKEND, cwd=str(cwd), timeout=900)
    assert os.listdir(cwd) == [], "the guide wrote into the current directory"
    if _writes_files(_source(path)):
        figures = [name for name in os.listdir(out_dir) if name.endswith(".png")]
        assert figures, "no figure in --out-dir"
        assert out_dir in result.stdout, "the guide does not print where it wrote"
