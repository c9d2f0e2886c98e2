"""scripts/check_links.py, which CI runs on the docs: it finds what it should
and nothing else."""

import importlib.util
import os

import pytest
from conftest import TESTS_DIR

SCRIPT = os.path.join(os.path.dirname(TESTS_DIR), "scripts", "check_links.py")


@pytest.fixture()
def check_links(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("check_links", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# The page\n\n## 3. What `m_hat**2` and `s_hat` measure\n\n## Results\n\n## Results\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    return module


@pytest.mark.parametrize("heading, slug", [
    ("3. What `m_hat**2` and `s_hat` measure", "3-what-m_hat2-and-s_hat-measure"),
    ("The gate's stabiliser", "the-gates-stabiliser"),
    ("PINN, convection with beta = 5", "pinn-convection-with-beta--5"),
    ("[A link](x.md) in a heading", "a-link-in-a-heading"),
])
def test_slugs_are_githubs(check_links, heading, slug):
    assert check_links.slugify(heading.replace("`", "")) == slug


def test_finds_broken_links_and_anchors(check_links, tmp_path):
    text = ("[ok](docs/page.md#results) [ok](docs/page.md#results-1) [ok](code.py)\n"
            "[ok](docs/page.md#3-what-m_hat2-and-s_hat-measure) [ok](https://x.org/a.md)\n"
            "[gone](docs/none.md) [anchor](docs/page.md#nope) ![img](img.png)\n"
            "[out](../x.md) [abs](/docs/page.md)\n"
            "`code.py/x` `docs/page.md` `docs/missing.md`\n"
            "```\n[in code](docs/none.md) `docs/also_missing.md`\n```\n"
            "`[in a span](docs/none.md)`\n\n[label]: docs/gone.md\n")
    (tmp_path / "README.md").write_text(text)
    problems = check_links.check_file("README.md")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "'docs/none.md': no such file or folder",
        "'docs/page.md#nope': no heading '#nope' in docs/page.md",
        "'img.png': no such file or folder",
        "'../x.md' leaves the repository",
        "absolute path '/docs/page.md': use a relative link",
        "'docs/gone.md': no such file or folder",
        "`docs/missing.md`: no such file or folder",
    ], problems


def test_reads_only_the_docstrings_of_python_files(check_links, tmp_path):
    (tmp_path / "guide.py").write_text(
        '"""[gone](gone.md)"""\n\nresults["a"][0](x)  # [not](checked.md)\n\n'
        'def f():\n    """See `docs/page.md` and `docs/gone.md`."""\n')
    problems = check_links.check_file("guide.py")
    assert [p.split(":")[1] for p in problems] == ["1", "6"], problems


def test_the_package_page_has_no_relative_links(check_links, tmp_path):
    (tmp_path / "pypi.md").write_text("[a](https://x.org) [b](docs/page.md)\n")
    assert len(check_links.check_package_page("pypi.md")) == 1
