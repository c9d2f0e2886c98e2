"""MkDocs hooks (mkdocs.yml `hooks:`): links from the docs to repository
files outside docs/, and the stylesheet of the highlighted code.

The pages of docs/ are read in the repository too, so they link to source
files, guides and benchmark reports by relative path
(`../keras_snr/snr_adam.py`). The site holds only docs/, where such a link
would be dead (and `mkdocs build --strict` rejects it). This hook checks
that each such target is a file or folder of the repository and rewrites
the link for the site:

- an image is copied into the site (under `_repo/`) and shown;
- any other link points to `extra.source_url` + the file's path when
  mkdocs.yml sets it (the web view of the repository), and otherwise
  becomes plain text that names the file.

A target that does not exist is a warning, which `--strict` makes an error.
Links between pages of docs/ are left to MkDocs, which checks them and their
anchors. `scripts/check_links.py` checks every relative link, anchors in
repository files included, from the repository's side.
"""

import logging
import os
import posixpath
import sys

from mkdocs.structure.files import File

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_links  # noqa: E402  (scripts/check_links.py)

log = logging.getLogger("mkdocs.hooks.repo_links")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
COPY_DIR = "_repo"
PYGMENTS_CSS = "css/pygments.css"


def _repo_root(config):
    return os.path.dirname(os.path.abspath(config.config_file_path))


def _outside_target(config, page_src_uri, target):
    """The repository-relative path of a relative link's target when it lies
    outside docs/, else None (a link MkDocs handles itself)."""
    path = check_links.split_target(target)[0]
    if path is None:
        return None
    docs_dir = os.path.abspath(config.docs_dir)
    page_dir = os.path.dirname(os.path.join(docs_dir, page_src_uri))
    resolved = os.path.normpath(os.path.join(page_dir, path))
    if resolved == docs_dir or resolved.startswith(docs_dir + os.sep):
        return None
    relative = os.path.relpath(resolved, _repo_root(config)).replace(os.sep, "/")
    return relative + ("/" if path.endswith("/") else "")


def on_config(config):
    config.extra_css.append(PYGMENTS_CSS)
    return config


def on_files(files, config):
    """Add the Pygments stylesheet, and copy the repository images that the
    pages show into the site."""
    from pygments.formatters import HtmlFormatter

    files.append(File.generated(
        config, PYGMENTS_CSS, content=HtmlFormatter(style="default").get_style_defs(".highlight")))
    root = _repo_root(config)
    for file in list(files.documentation_pages()):
        with open(file.abs_src_path, encoding="utf-8") as f:
            text = f.read()
        for link in check_links.markdown_links(text):
            relative = _outside_target(config, file.src_uri, link.target)
            if (link.image and relative and relative.lower().endswith(IMAGE_SUFFIXES)
                    and os.path.isfile(os.path.join(root, relative))
                    and files.get_file_from_path(f"{COPY_DIR}/{relative}") is None):
                files.append(File.generated(config, f"{COPY_DIR}/{relative}",
                                            abs_src_path=os.path.join(root, relative)))
    return files


def on_page_markdown(markdown, page, config, files):
    root = _repo_root(config)
    source_url = (config.extra or {}).get("source_url")
    pieces, last = [], 0
    for link in check_links.markdown_links(markdown):
        relative = _outside_target(config, page.file.src_uri, link.target)
        if relative is None:
            continue
        if not relative or relative.startswith("../"):
            log.warning(f"Doc file '{page.file.src_uri}' links to '{link.target}', "
                        "which is outside the repository.")
            continue
        if not os.path.exists(os.path.join(root, relative)):
            log.warning(f"Doc file '{page.file.src_uri}' links to '{link.target}', "
                        f"but '{relative}' is not a file or folder of the repository.")
            continue
        anchor = check_links.split_target(link.target)[1]
        if link.image and relative.lower().endswith(IMAGE_SUFFIXES):
            new_target = posixpath.relpath(f"{COPY_DIR}/{relative}",
                                           posixpath.dirname(page.file.src_uri) or ".")
            new = markdown[link.start:link.target_start] + new_target + markdown[link.target_end:link.end]
        elif source_url:
            new_target = source_url.rstrip("/") + "/" + relative + (f"#{anchor}" if anchor else "")
            new = markdown[link.start:link.target_start] + new_target + markdown[link.target_end:link.end]
        else:
            shown = relative.rstrip("/")
            new = link.text if shown in link.text else f"{link.text} (`{relative}`)"
        pieces += [markdown[last:link.start], new]
        last = link.end
    return "".join(pieces) + markdown[last:]
