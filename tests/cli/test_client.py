"""How the server's answers become the messages and exit codes a user sees."""

from __future__ import annotations

import httpx

from cli.client import error_from_response


def answer(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://h/api/v1/x"), **kwargs)


def test_the_api_error_message_is_shown_as_is() -> None:
    body = {"error": {"code": "not_found", "message": "no task 'x'", "field": "task"}}
    error = error_from_response(answer(404, json=body))
    assert (error.message, error.code, error.field, error.exit_code) == (
        "no task 'x'",
        "not_found",
        "task",
        1,
    )


def test_unauthorized_suggests_logging_in() -> None:
    error = error_from_response(
        answer(401, json={"error": {"code": "unauthorized", "message": "invalid API token"}})
    )
    assert "weighbridge login" in (error.hint or "")


def test_rate_limit_says_when_to_try_again_in_words() -> None:
    # The fields core.submissions.check_submission_limit puts in its 429.
    body = {
        "error": {
            "code": "rate_limited",
            "message": "you have used 3 of 3 submissions",
            "field": "task",
            "limit": 3,
            "window_hours": 24,
            "next_slot_at": "2026-12-07T08:01:23.456789+00:00",
            "retry_after_seconds": 86316,
        }
    }
    error = error_from_response(answer(429, json=body))
    assert error.hint == "try again in 23 h 58 min (at 2026-12-07 08:01 UTC)"


def test_rate_limit_without_a_slot_time_still_says_how_long() -> None:
    body = {"error": {"code": "rate_limited", "message": "used 3 of 3", "retry_after_seconds": 60}}
    assert error_from_response(answer(429, json=body)).hint == "try again in 1 min"


def test_an_answer_that_is_not_the_error_shape_still_reads_well() -> None:
    error = error_from_response(answer(502, text="<html>\n<b>Bad gateway</b>\n</html>"))
    assert error.message == "the server answered HTTP 502: <html> <b>Bad gateway</b> </html>"
    assert error.exit_code == 1
