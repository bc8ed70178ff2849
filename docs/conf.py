"""Sphinx configuration of sdexec's documentation.

    .venv/bin/sphinx-build -W --keep-going -n -b html docs build/docs/html
    .venv/bin/sphinx-build -W --keep-going -n -b man docs build/docs/man

The pages are Markdown (MyST), but for the command reference: its pages are
made from the ``sdexec`` command's argparse tree by ``_ext/sdexec_cli.py``,
and the ``man`` builder makes the man pages the Debian package installs from
the same pages.  Works with Debian 12's Sphinx 5.3 and MyST 0.18 (the package
build) as with the newer ones scripts/bootstrap installs (the test suite).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

from sdexec_cli import man_pages as _man_pages  # noqa: E402

from sdexec import __version__  # noqa: E402

project = "sdexec"
author = "the sdexec maintainers"
copyright = "the sdexec maintainers; LGPL-3.0-or-later"
version = release = __version__

extensions = ["myst_parser", "sdexec_cli"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = master_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
# Options are written --like-this in help text: no dashes or curly quotes.
smartquotes = False
# Every reference must resolve (sphinx-build -n makes a missing one a warning).
nitpicky = True

# Headings get anchors, so pages can link to page.md#a-heading.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

html_theme = "alabaster"
html_title = f"sdexec {release}"
html_theme_options = {
    "description": "Flux's RFC 42 subprocess server, on systemd",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_show_sourcelink = False

man_pages = _man_pages()
man_make_section_directory = False
