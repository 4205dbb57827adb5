"""Every page, the API docs included, works with no internet: nothing points outside the site.

Each page's HTML is parsed for every src/href/action/srcset, every CSS url(...) and every
literal http(s):// URL; the scripts and stylesheets it loads are fetched from the app and
checked the same way. The one exception is the vendored Swagger UI bundle, whose library code
holds URLs it never fetches (RFC links, JSON-Schema ids): the page turns off the one default
that would go online (the validator badge), and the browser test in test_pages.py loads /docs
with every request outside 127.0.0.1 blocked.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.web.conftest import SITE, make_done_submission

LITERAL = re.compile(r"""https?://[^\s"'<>()\\]+""", re.IGNORECASE)
CSS_URL = re.compile(
    r"""url\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^)\s]*))\s*\)""", re.IGNORECASE
)
LINK_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data", "srcset"}
VENDORED_SCRIPTS = {"/docs/assets/swagger-ui-bundle.js"}


class _Links(HTMLParser):
    """Every URL an HTML document names, and the scripts and stylesheets it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loads: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name == "srcset":
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()]
            elif name in LINK_ATTRIBUTES:
                self.urls.append(value)
            elif name == "style":
                self.urls += css_urls(value)
        if tag == "script" and values.get("src"):
            self.loads.append(values["src"])
        if tag == "link" and "stylesheet" in values.get("rel", "").split():
            self.loads.append(values["href"])
        self._in = tag

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.urls += css_urls(data)


def css_urls(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in CSS_URL.finditer(text)]


def outside(url: str, *, base: str = SITE) -> bool:
    """Whether loading or following `url` on a page of `base` would leave the site."""
    parts = urlsplit(urljoin(base + "/", url.strip()))
    if parts.scheme in ("data", "mailto", "javascript", ""):
        return False
    return parts.scheme not in ("http", "https") or parts.netloc != urlsplit(base).netloc


def foreign_urls(html: str) -> list[str]:
    links = _Links()
    links.feed(html)
    return [u for u in links.urls + LITERAL.findall(html) if outside(u)]


def test_the_checker_catches_what_would_go_online():
    html = """
    <link rel="stylesheet" href="https://cdn.example/x.css">
    <img srcset="//cdn.example/a.png 2x">
    <div style="background: url('https://cdn.example/b.png')"></div>
    <script>fetch("http://x.example/")</script>
    <a href="/ok">ok</a><a href="http://testserver/also-ok">ok</a>
    <img src="data:image/png;base64,AA==">"""
    assert sorted(foreign_urls(html)) == sorted(
        [
            "https://cdn.example/x.css",
            "//cdn.example/a.png",
            "https://cdn.example/b.png",
            "https://cdn.example/x.css",
            "https://cdn.example/b.png",
            "http://x.example/",
        ]
    )


async def _check_page(client: httpx.AsyncClient, path: str, *, status: int = 200) -> str:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert foreign_urls(html) == [], path
    links = _Links()
    links.feed(html)
    for asset in links.loads:
        assert not outside(asset), asset
        loaded = await client.get(urljoin(path, asset))
        assert loaded.status_code == 200, asset
        text = loaded.text
        if asset.endswith(".css"):
            assert loaded.headers["content-type"].startswith("text/css"), asset
            assert [u for u in css_urls(text) if outside(u)] == [], asset
            # Outside data: URIs (whose SVG namespaces are names, not addresses) no literal URL.
            text = CSS_URL.sub("", text)
        else:
            assert "javascript" in loaded.headers["content-type"], asset
        if asset not in VENDORED_SCRIPTS:
            assert [u for u in LITERAL.findall(text) if outside(u)] == [], asset
    return html


async def test_home_task_and_submission_pages_name_nothing_outside_the_site(client, services):
    submission_id = await make_done_submission(services)
    await _check_page(client, "/")
    await _check_page(client, "/tasks/toy")
    await _check_page(client, "/tasks/toy?weights=accuracy=heavy", status=422)
    await _check_page(client, f"/submissions/{submission_id}")
    await _check_page(client, "/no/such/page", status=404)


async def test_docs_page_loads_swagger_ui_from_the_app(client):
    html = await _check_page(client, "/docs")
    assert "SwaggerUIBundle(" in html and "'/openapi.json'" in html
    # Swagger UI's validator badge would send the document to an online validator.
    assert '"validatorUrl": null' in html
    for asset, kind in (
        ("/docs/assets/swagger-ui-bundle.js", "javascript"),
        ("/docs/assets/swagger-ui.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
    ):
        response = await client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    assert "SwaggerUIBundle" in (await client.get("/docs/assets/swagger-ui-bundle.js")).text
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Weighbridge"


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
async def test_no_cdn_docs_pages_remain(client, path):
    # FastAPI's own ReDoc page loads from a CDN; it is turned off rather than left blank.
    assert (await client.get(path)).status_code == 404
