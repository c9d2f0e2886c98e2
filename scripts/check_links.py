"""Check the relative links of everything a user reads in the repository.

Checked files (or those given as arguments): README.md, every Markdown file
under docs/ and benchmarks/ (the benchmark reports in benchmarks/results/
only for links, see below), and the docstrings and bare string blocks of
guides/*.py and keras_snr/*.py.

- Links, `[text](target)`, `![alt](target)` and `[label]: target`, outside
  code: a relative target must be a file or folder of the repository, and
  its `#anchor`, if any, a heading of the target Markdown file (GitHub's
  anchors, which mkdocs.yml gives the site too) or an `id`/`name` in it.
  Relative to the file that holds the link, as GitHub resolves them.
- Paths in code spans, such as `benchmarks/results/gpu.md`: a code span
  that is a relative path of two parts or more ending in a file extension
  or `/` must name a file or folder, relative to the repository root or to
  the file that mentions it (not in benchmarks/results/, whose reports
  quote the commands they were made with, temporary paths included).
- The package page (pyproject.toml's `readme`), which PyPI shows without
  the rest of the repository: no relative links at all.

Prints one line per problem and exits 1 if there is any; stdlib only.

    python scripts/check_links.py            # the files above
    python scripts/check_links.py FILE ...   # just these
"""

import ast
import glob
import os
import re
import sys
import unicodedata
from typing import NamedTuple
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join("benchmarks", "results")


class Link(NamedTuple):
    start: int  # offsets in the text: the whole link
    end: int
    target_start: int  # and its target
    target_end: int
    image: bool
    text: str
    target: str


# ---------------------------------------------------------------- parsing

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_INLINE = re.compile(
    r"(!?)\[((?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]"  # [text], one level of nested []
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (target
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"  # "title")
)
_DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:[ \t]*(<[^>\n]*>|\S+)", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(={2,}|-{2,})[ \t]*$")
_HTML_ID = re.compile(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""")
_PATH_SPAN = re.compile(r"^(?:\.\./)*[A-Za-z_.][\w.-]*(?:/[\w.-]+)+/?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def code_mask(text):
    """`text` with fenced code blocks and code spans blanked out (offsets kept)."""
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            out.append(" " * (len(line) - 1) + line[-1:] if line.endswith("\n") else " " * len(line))
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
            out.append("".join(c if c == "\n" else " " for c in line))
        else:
            out.append(line)
    masked = "".join(out)
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), masked)


def code_spans(text):
    """(offset, content) of every code span outside fenced blocks."""
    out, fence, offset = [], None, 0
    lines = []
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
        else:
            lines.append((offset, line))
        offset += len(line)
    for start, line in lines:
        for m in _CODE_SPAN.finditer(line):
            out.append((start + m.start(2), m.group(2).strip()))
    return out


def markdown_links(text):
    """Every inline link, image and link definition of Markdown `text`."""
    masked = code_mask(text)
    links = []
    for m in _INLINE.finditer(masked):
        target = m.group(3)
        t0, t1 = m.start(3), m.end(3)
        if target.startswith("<"):
            target, t0, t1 = target[1:-1], t0 + 1, t1 - 1
        links.append(Link(m.start(), m.end(), t0, t1, m.group(1) == "!",
                          text[m.start(2):m.end(2)], target))
    for m in _DEFINITION.finditer(masked):
        target = m.group(2).strip("<>")
        links.append(Link(m.start(), m.end(), m.start(2), m.end(2), False, m.group(1), target))
    return sorted(links)


def split_target(target):
    """`(path, anchor)` of a link target; path None for an external one
    (a URL scheme or `//host`), "" for an anchor on the same page."""
    if _SCHEME.match(target) or target.startswith("//"):
        return None, None
    path, _, anchor = target.partition("#")
    path = path.split("?", 1)[0]
    return unquote(path), unquote(anchor) or None


def slugify(heading):
    """GitHub's anchor of a heading (as pymdownx.slugs.slugify(case="lower"),
    which mkdocs.yml gives the site)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"</?[^>]*>", "", unicodedata.normalize("NFC", text)).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _is_paragraph_line(line):
    """Whether a setext underline below `line` makes it a heading."""
    stripped = line.strip()
    return bool(stripped) and not _HEADING.match(line) and not re.match(
        r"([-*+>|]|\d+[.)])(\s|$)", stripped) and not line.startswith("    ")


def anchors_of(path, _cache={}):
    """The anchors a Markdown file defines: its headings' slugs (repeated
    ones numbered `-1`, `-2`, as GitHub does) and its HTML ids and names."""
    if path not in _cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        found, counts = set(), {}
        masked_lines = code_mask(text).splitlines()
        for i, line in enumerate(masked_lines):
            match = _HEADING.match(line)
            heading = None
            if match:
                heading = text.splitlines()[i].strip().lstrip("#").strip().rstrip("#").strip()
            elif _SETEXT.match(line) and i > 0 and _is_paragraph_line(masked_lines[i - 1]):
                heading = text.splitlines()[i - 1].strip()
            if heading is not None:
                slug = slugify(heading.replace("`", ""))
                n = counts.get(slug, 0)
                found.add(slug if n == 0 else f"{slug}-{n}")
                counts[slug] = n + 1
        found.update(_HTML_ID.findall(text))
        _cache[path] = found
    return _cache[path]


# ----------------------------------------------------------------- checks


def docstring_blocks(path):
    """(first line, text) of every docstring and bare string statement."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            yield node.lineno, node.value.value


def _line(text, offset):
    return text.count("\n", 0, offset)


def check_link(source, link, line):
    """The problem with one link, or None."""
    path, anchor = split_target(link.target)
    if path is None:
        return None
    if path.startswith("/"):
        return f"{source}:{line}: absolute path '{link.target}': use a relative link"
    base = os.path.dirname(os.path.join(ROOT, source))
    resolved = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, source)
    if os.path.relpath(resolved, ROOT).startswith(".."):
        return f"{source}:{line}: '{link.target}' leaves the repository"
    if not os.path.exists(resolved):
        return f"{source}:{line}: '{link.target}': no such file or folder"
    if anchor and resolved.endswith(".md") and anchor not in anchors_of(resolved):
        return (f"{source}:{line}: '{link.target}': no heading "
                f"'#{anchor}' in {os.path.relpath(resolved, ROOT)}")
    return None


def check_path_span(source, span, line):
    """The problem with a path named in a code span, or None."""
    if not _PATH_SPAN.match(span) or not (span.endswith("/") or re.search(r"\.[A-Za-z]\w*$", span)):
        return None
    base = os.path.dirname(os.path.join(ROOT, source))
    for candidate in (os.path.join(ROOT, span), os.path.join(base, span)):
        if os.path.exists(os.path.normpath(candidate)):
            return None
    return f"{source}:{line}: `{span}`: no such file or folder"


def check_text(source, text, first_line=1, paths=True):
    problems = []
    for link in markdown_links(text):
        problem = check_link(source, link, first_line + _line(text, link.start))
        if problem:
            problems.append(problem)
    if paths:
        for offset, span in code_spans(text):
            problem = check_path_span(source, span, first_line + _line(text, offset))
            if problem:
                problems.append(problem)
    return problems


def check_file(source):
    """The problems of one file (a path relative to the repository)."""
    full = os.path.join(ROOT, source)
    paths = not os.path.normpath(source).startswith(RESULTS_DIR + os.sep)
    if source.endswith(".py"):
        problems = []
        for lineno, block in docstring_blocks(full):
            problems += check_text(source, block, lineno, paths)
        return problems
    with open(full, encoding="utf-8") as f:
        return check_text(source, f.read(), paths=paths)


def package_page():
    """pyproject.toml's `readme` file, or None."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        match = re.search(r'^readme\s*=\s*(?:"([^"]+)"|\{[^}]*file\s*=\s*"([^"]+)")', f.read(), re.M)
    return match and (match.group(1) or match.group(2))


def check_package_page(source):
    with open(os.path.join(ROOT, source), encoding="utf-8") as f:
        text = f.read()
    return [f"{source}:{1 + _line(text, link.start)}: relative link '{link.target}' "
            "(PyPI shows this page without the repository: use an absolute URL or none)"
            for link in markdown_links(text) if split_target(link.target)[0] is not None]


def default_files():
    patterns = ["README.md", "docs/**/*.md", "benchmarks/**/*.md", "guides/*.py", "keras_snr/*.py"]
    files = set()
    for pattern in patterns:
        files.update(os.path.relpath(p, ROOT)
                     for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))
    return sorted(files)


def main(argv):
    files = [os.path.relpath(os.path.abspath(a), ROOT) for a in argv] or default_files()
    problems = []
    for source in files:
        problems += check_file(source)
    page = package_page()
    if page and not argv:
        problems += check_package_page(page)
    for problem in problems:
        print(problem)
    print(f"check_links: {len(files)} files, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
