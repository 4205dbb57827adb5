"""Errors on the website are pages in the site's layout; errors under /api stay JSON."""

from __future__ import annotations

import pytest

NAV = '<nav><a href="/">Tasks</a>'


def _is_site_page(response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert NAV in response.text and 'href="/static/style.css"' in response.text


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/submissions/" + "0" * 32, "submission"),
        ("/tasks/nope", "unknown task &#39;nope&#39;; known tasks: toy"),
        ("/no/such/page", "There is no page at /no/such/page."),
        ("/redoc", "There is no page at /redoc."),
    ],
)
async def test_unknown_pages_are_html_404_pages_with_the_site_navigation(client, path, says):
    response = await client.get(path)
    _is_site_page(response, 404)
    assert "<title>Not found" in response.text and says in response.text


async def test_bad_weights_give_an_html_422_page_that_still_shows_the_leaderboard(client):
    response = await client.get("/tasks/toy", params={"weights": "accuracy=heavy"})
    _is_site_page(response, 422)
    assert 'role="alert"' in response.text and "accuracy" in response.text
    assert 'id="leaderboard"' in response.text


@pytest.mark.parametrize(
    "path", ["/api/v1/tasks/nope", "/api/v1/submissions/" + "0" * 32, "/api/v1/no-such-route"]
)
async def test_api_404s_keep_the_json_error_shape(client, path):
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["message"]


async def test_api_bad_input_keeps_the_json_error_shape(client):
    response = await client.get("/api/v1/tasks/toy/leaderboard", params={"weights": "x=heavy"})
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["field"] == "weights"
    wrong_method = await client.delete("/api/v1/tasks")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
