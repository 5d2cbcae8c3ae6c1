"""A griffe extension for the API reference: read ``Example:`` docstring sections as ``Examples:``.

The package's docstrings are Google style with a singular ``Example:`` heading, which the Google
parser would render as an admonition of Markdown text (so ``>>>`` lines and their outputs would be
read as Markdown). Renamed, they are parsed as examples and rendered as Python console blocks.
Loaded by ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExamplesHeading(griffe.Extension):
    """Rename each ``Example:`` heading of a docstring to ``Examples:`` when the object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
