"""Sphinx configuration for the unitednet documentation.

Build locally with ``make docs`` (or
``.venv/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html``).
The build must work without network access: notebooks are stored executed and
intersphinx falls back to an empty local inventory when the remote ones cannot
be fetched.
"""

from __future__ import annotations

import warnings
from datetime import date
from importlib.metadata import metadata
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sphinx.application import Sphinx

# sphinx-autodoc-typehints 3.6 still calls a Sphinx API deprecated for Sphinx 10; the Python warning it raises
# on every docstring says nothing about these docs, so keep it out of the build log.
warnings.filterwarnings("ignore", message=r".*set_application' is deprecated", module="sphinx_autodoc_typehints")

# -- Project information -------------------------------------------------------

_meta = metadata("unitednet")

project = _meta["Name"]
author = _meta.get("Author") or "unitednet developers"
copyright = f"{date.today():%Y}, {author}"
release = _meta["Version"]
version = ".".join(release.split(".")[:2])

repository_url = "https://github.com/unitednet/unitednet"

# -- General configuration -----------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # must come before sphinx_autodoc_typehints
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]

if find_spec("sphinx_copybutton") is not None:  # optional: a "copy" button on code cells
    extensions.append("sphinx_copybutton")

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
]
# .rst first: autosummary writes its generated pages with the first suffix, and its templates are reST.
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}
master_doc = "index"
default_role = "literal"

# -- MyST / myst-nb ------------------------------------------------------------

myst_enable_extensions = [
    "colon_fence",
    "dollarmath",
]
myst_heading_anchors = 3

# Notebooks in tutorials/ are committed with their outputs; the docs never run them.
nb_execution_mode = "off"
nb_merge_streams = True

# -- autodoc / autosummary / napoleon ------------------------------------------

autosummary_generate = True  # writes docs/generated/ (git-ignored)
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autoclass_content = "class"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True

typehints_defaults = "comma"
always_document_param_types = False

# -- intersphinx ---------------------------------------------------------------

# Each project first tries its remote objects.inv; if that cannot be reached
# (offline build machines, CI without network) Sphinx falls back to the empty
# local inventory below, which is logged as information instead of a warning.
# Cross-references to these projects then render as plain text.
_OFFLINE_INVENTORY = "_offline_objects.inv"

_intersphinx_targets = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "pandas": "https://pandas.pydata.org/docs",
    "anndata": "https://anndata.readthedocs.io/en/stable",
    "mudata": "https://mudata.readthedocs.io/en/latest",
    "scanpy": "https://scanpy.readthedocs.io/en/stable",
    "scvi-tools": "https://docs.scvi-tools.org/en/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
}
intersphinx_mapping = {name: (url, (None, _OFFLINE_INVENTORY)) for name, url in _intersphinx_targets.items()}
intersphinx_timeout = 10

# -- HTML output ---------------------------------------------------------------

html_theme = "furo"
html_title = f"{project} {release}"
html_show_sphinx = False
html_theme_options = {
    "source_repository": repository_url,
    "source_branch": "main",
    "source_directory": "docs/",
}

# -- Tutorials -----------------------------------------------------------------

# tutorials.md holds a toctree with the glob below over docs/tutorials, a symlink
# to the repository's tutorials/ folder. While that folder holds no notebook the
# glob matches nothing, which Sphinx reports as a warning (and, as of Sphinx 9,
# one that `suppress_warnings` cannot silence). An empty tutorials folder is
# expected, not an error: in that case the glob line is dropped before parsing
# and a short note is shown instead.
TUTORIALS_GLOB = "tutorials/*"


def _tolerate_empty_tutorials(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname != "tutorials":
        return
    if any(name.startswith("tutorials/") for name in app.env.found_docs):
        return
    text = source[0]
    if f"\n{TUTORIALS_GLOB}\n" not in text:
        return
    text = text.replace(f"\n{TUTORIALS_GLOB}\n", "\n", 1)
    source[0] = text + "\n```{note}\nNo tutorial notebook has been published yet.\n```\n"


# -- Free-form "Returns" sections -----------------------------------------------

# The package's docstrings are numpy style, but a Returns section often describes in prose what a function writes
# into the MuData object ("The copy when ``copy=True``, else ``None``. Writes: ..."). Napoleon reads every
# unindented line of a Returns section as "type" or "name : type", which garbles such prose. Before napoleon runs,
# a Returns section whose first line is not followed by an indented description is therefore turned into a plain
# ``:returns:`` field; the return type still comes from the annotation (sphinx-autodoc-typehints). Sections in the
# numpydoc form ("type" then an indented description) are left to napoleon.
_RETURNS_HEADERS = ("Returns", "Return", "Yields")


def _is_section_header(lines: list[str], i: int) -> bool:
    if i + 1 >= len(lines):
        return False
    title, underline = lines[i], lines[i + 1].strip()
    return bool(title.strip()) and not title[0].isspace() and len(underline) >= 3 and set(underline) == {"-"}


def _free_form_returns(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    i = 0
    while i < len(lines):
        if not (lines[i].strip() in _RETURNS_HEADERS and _is_section_header(lines, i)):
            i += 1
            continue
        start = i + 2
        end = start
        while end < len(lines) and not _is_section_header(lines, end):
            end += 1
        body = lines[start:end]
        while body and not body[0].strip():
            body.pop(0)
        while body and not body[-1].strip():
            body.pop()
        numpydoc_form = len(body) >= 2 and not body[0][0].isspace() and body[1][:1].isspace()
        if not body or numpydoc_form:
            i = end
            continue
        # Two blank lines end the section before it for napoleon, which then passes the field through unchanged.
        field = [
            "",
            "",
            f":returns: {body[0].strip()}",
            *(f"    {line}" if line.strip() else "" for line in body[1:]),
            "",
        ]
        lines[i:end] = field
        i += len(field)


def setup(app: Sphinx) -> None:
    """Register the build hooks defined in this file."""
    app.connect("source-read", _tolerate_empty_tutorials)
    # Priority below napoleon's default (500), so this runs first.
    app.connect("autodoc-process-docstring", _free_form_returns, priority=400)
