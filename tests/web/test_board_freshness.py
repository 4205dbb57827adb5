"""The task page and the API show the stored board, and say when it is being rebuilt."""

from __future__ import annotations

from core.boards import rebuild_stale_leaderboards
from core.context import Services
from tests.web.conftest import make_done_submission


async def test_the_page_says_the_board_is_being_updated_until_it_is_rebuilt(
    client, services: Services
) -> None:
    await make_done_submission(services, name="strong")
    before = await client.get("/tasks/toy")
    assert before.status_code == 200
    assert "The leaderboard is being updated" in before.text
    assert "No ranked models yet." in before.text

    assert await rebuild_stale_leaderboards(services) == 1
    after = await client.get("/tasks/toy")
    assert "The leaderboard is being updated" not in after.text
    assert ">strong</a>" in after.text

    api = await client.get("/api/v1/tasks/toy/leaderboard", params={"weights": "macro_f1=2"})
    assert api.headers["content-type"].startswith("application/json")
    board = api.json()
    assert [r["model"] for r in board["rows"]] == ["strong"]
    assert {"rank", "model", "submission_id", "score", "metrics", "unsandboxed"} <= set(
        board["rows"][0]
    )
    assert board["board"]["stale"] is False and board["board"]["version"] >= 1
    assert board["ties"]["weights"] == "default"
