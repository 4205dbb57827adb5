"""Task descriptions render as Markdown, and nothing in one can run script or load from afar."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.web.conftest import set_task_description
from web.markdown import render_markdown

HOSTILE = (
    "Uses `pixels` and **bold**.\n\n"
    "<script>alert('raw')</script>\n\n"
    '<a href="javascript:alert(1)">raw link</a> '
    "[md link](javascript:alert(2)) [data](data:text/html;base64,PHNjcmlwdD4=) "
    '![pixel](https://tracker.example/p.png) <img src=x onerror="alert(3)">\n\n'
    "[paper](https://example.org/paper)"
)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def elements(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.elements


def assert_harmless(html: str) -> None:
    for tag, attrs in elements(html):
        assert tag not in ("script", "img", "iframe", "style"), tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if "href" in attrs:
            assert attrs["href"].startswith(("https://", "http://", "mailto:")), attrs


def test_markdown_renders_and_is_sanitised():
    html = str(render_markdown(HOSTILE))
    assert "<code>pixels</code>" in html and "<strong>bold</strong>" in html
    assert_harmless(html)
    assert "tracker.example" not in html
    # Raw HTML is shown as text, not dropped silently; ordinary links stay, marked nofollow.
    assert "&lt;script&gt;" in html
    links = [attrs for tag, attrs in elements(html) if tag == "a"]
    assert links == [{"href": "https://example.org/paper", "rel": "nofollow noopener noreferrer"}]


@pytest.mark.parametrize("text", [None, ""])
def test_no_description_renders_nothing(text):
    assert str(render_markdown(text)) == ""


async def test_task_pages_render_the_description_as_markdown(client, services):
    await set_task_description(services, "toy", HOSTILE)
    for path in ("/", "/tasks/toy"):
        html = (await client.get(path)).text
        assert "<code>pixels</code>" in html and "`pixels`" not in html, path
        start = html.index('<div class="description">')
        description = html[start : html.index("</div>", start)]
        assert_harmless(description)
        assert "&lt;script&gt;alert" in description and "<script>alert" not in html, path
