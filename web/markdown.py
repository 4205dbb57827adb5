"""Task descriptions as safe HTML: CommonMark without raw HTML, then an allow-list sanitiser.

A description is written by an admin, but it is shown to every visitor, so it is treated as
untrusted: markdown-it escapes raw HTML and refuses `javascript:`-like links, and nh3 (Ammonia)
keeps only the tags, attributes and URL schemes below. No images: a page must not load anything
from outside the site.
"""

from __future__ import annotations

from functools import cache

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}


@cache
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str | None) -> Markup:
    """`text` as sanitised HTML, ready for a template (an empty string for no text)."""
    if not text:
        return Markup("")
    html = _parser().render(text)
    # Headings of a description sit under the page's own h1/h2: shift them down two levels.
    for level in (2, 1):
        html = html.replace(f"<h{level}>", f"<h{level + 2}>").replace(
            f"</h{level}>", f"</h{level + 2}>"
        )
    clean = nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="nofollow noopener noreferrer",
    )
    return Markup(clean)  # safe: nh3 kept only the allow-listed markup above
