"""Drop the Sphinx role prefixes (``:mod:``, ``:func:``, ...) the docstrings put before inline code.

The API reference renders docstrings as Markdown (``docstring_style: null``), where
``:mod:`mofi_core.runner``` reads as the text ":mod:" before the code; the code stays.
Loaded by ``hooks:`` in mkdocs.yml; not part of the site.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html)
