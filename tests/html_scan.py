"""Reading built HTML the way a browser would: what it loads, links to and shows."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]+:|//|\\\\)", re.IGNORECASE)
LOCAL_SCHEMES = ("data:", "about:", "javascript:", "mailto:", "tel:", "blob:")
LOADING = {"src", "href", "srcset", "imagesrcset", "poster", "data", "background", "xlink:href",
           "manifest"}
CSS_URL = re.compile(r"url\(\s*[\"']?([^\"')]*)", re.IGNORECASE)
CSS_IMPORT = re.compile(r"@import\s+(?:url\(\s*)?[\"']?([^\"')\s;]+)", re.IGNORECASE)


def remote(url: str) -> bool:
    url = url.strip()
    return bool(REMOTE.match(url)) and not url.lower().startswith(LOCAL_SCHEMES)


class Page(HTMLParser):
    """What a browser would load from one page, its links, its CSS and its visible text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.links: list[str] = []  # <a href>
        self.css: list[str] = []
        self.cells: list[str] = []  # text of each <td>/<th>, whitespace-normalised
        self.scripts = 0
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value is None:
                continue
            if key == "style":
                self.css.append(value)
            elif tag in ("a", "area") and key == "href":
                self.links.append(value)
            elif key in ("srcset", "imagesrcset"):
                self.loads += [(tag, key, c.split()[0]) for c in value.split(",") if c.strip()]
            elif key in LOADING:
                self.loads.append((tag, key, value))
        if tag == "script":
            self.scripts += 1
        if tag in ("td", "th"):
            self._cell = []
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]

    def handle_data(self, data):
        if self._in and self._in[-1] == "style":
            self.css.append(data)
        if self._cell is not None:
            self._cell.append(data)


def remote_loads(site: Path) -> list[str]:
    """Every reference in ``site`` that a browser would fetch from the network."""
    found = []
    for file in sorted(site.rglob("*")):
        if file.suffix == ".html":
            page = Page(file.read_text(encoding="utf-8"))
            found += [f"{file}: <{t} {a}={u}>" for t, a, u in page.loads if remote(u)]
            css = page.css
        elif file.suffix == ".css":
            css = [file.read_text(encoding="utf-8")]
        else:
            continue
        for text in css:
            found += [f"{file}: css {u}" for u in CSS_URL.findall(text) + CSS_IMPORT.findall(text)
                      if remote(u)]
    return found
