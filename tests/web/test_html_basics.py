"""HTML basics on every page the site has: one h1, every input labelled, every image with alt
text, no URL outside the site, no server path (the home folder, /root, /tmp, the storage layout).

The pages are found, not listed: the crawl starts from the home page and every GET page route
of the app (web/ modules) whose path parameters it can fill from the seeded data, and follows
every link on the site. A page another part adds (submission, benchmark, sign-in, account,
admin pages) is checked as soon as it is routed or linked. It crawls as a visitor and as a
signed-in admin (Bearer token), so pages behind sign-in are checked too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import sqlalchemy as sa
from fastapi.routing import APIRoute

from core.context import Services
from core.models import BenchmarkAlert, BenchmarkSeries, Submission, User
from tests.web.conftest import SITE
from tests.web.test_leaderboard_pages import bearer, seed

MAX_PAGES = 150
SKIP = ("/static/", "/api/", "/docs", "/openapi.json", "/metrics", "/healthz")
# Storage keys (ARCHITECTURE.md's layout) that must never reach a page.
STORAGE_KEY = re.compile(
    r"submissions/[0-9a-f]{32}/(upload|build|results)/|datasets/[0-9a-f]{64}/|envs/[0-9a-f]{64}"
)
URL = re.compile(r"\bhttps?://[^\s\"'<>)]+", re.I)


class Page(HTMLParser):
    """What the checks need from one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.h1 = 0
        self.links: list[str] = []
        self.inputs: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.images: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self._labels = 0  # depth of open <label> elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for value in a.values():
            if value:
                self.urls += URL.findall(value)
        if tag == "h1":
            self.h1 += 1
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "label":
            self._labels += 1
            if a.get("for"):
                self.label_for.add(a["for"] or "")
        elif tag in ("input", "select", "textarea"):
            if tag != "input" or (a.get("type") or "text") not in (
                "hidden",
                "submit",
                "button",
                "reset",
                "image",
            ):
                self.inputs.append({**a, "_in_label": "1" if self._labels else None})
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._labels:
            self._labels -= 1

    def handle_data(self, data: str) -> None:
        self.urls += URL.findall(data)


def problems(url: str, html: str, *, forbidden_paths: list[str]) -> list[str]:
    page = Page()
    page.feed(html)
    found = []
    if page.h1 != 1:
        found.append(f"{url}: {page.h1} h1 elements (want exactly one)")
    for field in page.inputs:
        labelled = (
            field.get("_in_label")
            or (field.get("id") and field["id"] in page.label_for)
            or field.get("aria-label")
            or field.get("aria-labelledby")
        )
        if not labelled:
            found.append(f"{url}: an input without a label: {field}")
    for image in page.images:
        if "alt" not in image:
            found.append(f"{url}: an image without alt text: {image.get('src')}")
    site = urlsplit(SITE).hostname
    for outside in page.urls:
        if urlsplit(outside).hostname != site:
            found.append(f"{url}: a URL outside the site: {outside}")
    for path in forbidden_paths:
        if path in html:
            found.append(f"{url}: a server path {path!r}")
    match = STORAGE_KEY.search(html)
    if match:
        found.append(f"{url}: a storage key {match.group(0)!r}")
    return found


def walk_routes(routes, prefix: str = ""):
    """(path, route) of every route, into included routers (FastAPI includes them lazily)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            inner = prefix + getattr(getattr(route, "include_context", None), "prefix", "")
            yield from walk_routes(route.original_router.routes, inner)


def page_routes(app, values: dict[str, str]) -> list[str]:
    """Every GET page route of the app (a web/ module's), its path parameters filled from
    `values` (routes with a parameter no value fills are reached by links, if at all)."""
    paths = []
    for path, route in walk_routes(app.routes):
        if "GET" not in route.methods:
            continue
        if not getattr(route.endpoint, "__module__", "").startswith("web."):
            continue
        names = re.findall(r"{(\w+)(?::\w+)?}", path)
        if all(n in values for n in names):
            for n in names:
                path = re.sub("{" + n + r"(?::\w+)?}", values[n], path)
            paths.append(path)
    return paths


async def crawl(
    client: httpx.AsyncClient, starts: list[str], *, headers: dict[str, str]
) -> dict[str, str]:
    """url -> HTML of every page reached from `starts` on this site."""
    seen: dict[str, str] = {}
    queue = list(dict.fromkeys(starts))
    while queue and len(seen) < MAX_PAGES:
        path = queue.pop(0)
        if path in seen or path.startswith(SKIP):
            continue
        response = await client.get(path, headers=headers)
        if not response.headers.get("content-type", "").startswith("text/html"):
            seen[path] = ""
            continue
        seen[path] = response.text
        parser = Page()
        parser.feed(response.text)
        for href in parser.links:
            target = urlsplit(urljoin(SITE + path, href))
            if target.hostname != urlsplit(SITE).hostname or not target.path:
                continue
            link = target.path + (f"?{target.query}" if target.query else "")
            if link not in seen and link not in queue:
                queue.append(link)
    return {k: v for k, v in seen.items() if v}


async def seed_everything(services: Services) -> dict[str, str]:
    """The leaderboard seed plus a failed submission and a benchmark with an alert."""
    ids = await seed(services)
    async with services.db.session() as session:
        owner = await session.scalar(sa.select(User).where(User.name == "bob"))
        assert owner is not None
        failed = Submission(
            task_id=None,
            user_id=owner.id,
            name="broken",
            status="failed",
            failed_stage="build",
            error="handler.py: no handle(data, context) function",
        )
        bench = Submission(kind="benchmark", user_id=owner.id, name="nightly", status="done")
        session.add_all([failed, bench])
        await session.flush()
        series = BenchmarkSeries(identity="b" * 64, benchmark="resnet-nightly")
        session.add(series)
        await session.flush()
        session.add(
            BenchmarkAlert(
                series_id=series.id,
                metric="throughput",
                rule_key="r0",
                kind="fired",
                method="threshold",
                submission_id=bench.id,
                detected_id=bench.id,
                baseline=120.0,
                value=80.0,
                change=-40.0,
            )
        )
        ids.update(failed=failed.id, benchmark=bench.id)
    return ids


async def test_every_page_has_one_h1_labelled_inputs_alt_text_and_no_outside_url_or_path(
    client: httpx.AsyncClient, services: Services
) -> None:
    ids = await seed_everything(services)
    app = client._transport.app  # type: ignore[attr-defined]
    values = {
        "slug": "toy",
        "submission_id": ids["ada-best"],
        "id": ids["ada-best"],
        "name": "resnet-nightly",
        "benchmark": "resnet-nightly",
    }
    starts = ["/", *page_routes(app, values)]
    starts += [f"/submissions/{ids['failed']}", f"/submissions/{ids['benchmark']}"]
    # Error pages are pages too.
    starts += ["/no/such/page", "/tasks/nope", "/tasks/toy?weights=accuracy=heavy"]
    forbidden = [str(services.settings.home), str(Path.home()) + "/", "/root/", "/tmp/"]
    found: list[str] = []
    crawled: set[str] = set()
    for who in ({}, bearer(ids["org"])):
        pages = await crawl(client, starts, headers=who)
        crawled |= set(pages)
        for url, html in pages.items():
            found += problems(url, html, forbidden_paths=forbidden)
    assert found == []
    # The crawl reached the pages this part knows of (and whatever else the site links).
    assert {"/", "/tasks/toy", "/tasks/toy?all=1", f"/submissions/{ids['ada-best']}"} <= crawled


def test_the_checks_catch_what_they_check() -> None:
    bad = (
        '<h1>a</h1><h1>b</h1><input name="q"><img src="/x.png">'
        '<a href="https://cdn.example.com/x.js">x</a> /root/.weighbridge '
        f"submissions/{'a' * 32}/results/test/log"
    )
    found = problems("/bad", bad, forbidden_paths=["/root/"])
    assert len(found) == 6, found
    good = (
        '<h1>a</h1><label for="q">Q</label><input id="q" name="q">'
        '<label>W <input name="w"></label><input type="hidden" name="h">'
        f'<img src="/x.png" alt=""><a href="{SITE}/tasks">t</a> /submissions/{"a" * 32}'
    )
    assert problems("/good", good, forbidden_paths=["/root/"]) == []
