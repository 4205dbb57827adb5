"""The home page and a task's leaderboard over the real app: what each viewer is shown (hidden,
flagged, private, baseline rows; each owner's best or every row; rank-only tasks) and that the
CSV/JSON exports and the API show exactly that."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import httpx
import sqlalchemy as sa

from core.accounts import create_user
from core.boards import rebuild_stale_leaderboards
from core.context import Services
from core.models import (
    BenchmarkAlert,
    BenchmarkSeries,
    Score,
    Submission,
    Task,
    User,
)

# (owner, model, accuracy, marks)
BOARD: list[tuple[str, str, float, dict[str, Any]]] = [
    ("ada", "ada-best", 0.93, {}),
    ("ada", "ada-mid", 0.88, {}),
    ("ada", "ada-low", 0.71, {}),
    ("bob", "bob-one", 0.90, {"flagged": True, "flag_reason": "trained on the test set?"}),
    ("cyd", "cyd-hidden", 0.97, {"hidden": True}),
    ("cyd", "cyd-private", 0.95, {"private": True}),
    ("org", "org-base-1", 0.62, {"baseline": True}),
    ("org", "org-base-2", 0.55, {"baseline": True}),
]


async def seed(services: Services, board=BOARD) -> dict[str, str]:
    """Users (with tokens in the result under their names), done submissions of task `toy`
    scored on its hidden set, and the stored board rebuilt."""
    found: dict[str, str] = {}
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        users: dict[str, User] = {}
        for owner in dict.fromkeys(o for o, *_ in board):
            users[owner], found[owner] = await create_user(
                session, owner, email=f"{owner}@example.org", is_admin=owner == "org"
            )
        for owner, name, acc, marks in board:
            s = Submission(
                task_id=task.id, user_id=users[owner].id, name=name, status="done", **marks
            )
            session.add(s)
            await session.flush()
            found[name] = s.id
            for metric, value in (("accuracy", acc), ("macro_f1", acc - 0.0213)):
                session.add(
                    Score(
                        submission_id=s.id,
                        dataset="test",
                        metric=metric,
                        value=value,
                        ci_low=value - 0.01,
                        ci_high=value + 0.01,
                    )
                )
    await rebuild_stale_leaderboards(services)
    return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def page_models(html: str) -> list[str]:
    """The model names of the leaderboard table's rows, in order."""
    body = html.split('<table id="leaderboard"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td><a href="/submissions/[0-9a-f]+">([^<]+)</a>', body)


async def all_views(client: httpx.AsyncClient, query: str = "", headers=None) -> dict[str, Any]:
    headers = headers or {}
    sep = "&" if query else ""
    page = await client.get(f"/tasks/toy?{query}", headers=headers)
    csv_text = (await client.get(f"/tasks/toy/leaderboard.csv?{query}", headers=headers)).text
    exported = (await client.get(f"/tasks/toy/leaderboard.json?{query}", headers=headers)).json()
    per_user = "all" if "all=1" in query else "best"
    api = (
        await client.get(
            f"/api/v1/tasks/toy/leaderboard?{query}{sep}per_user={per_user}", headers=headers
        )
    ).json()
    return {
        "page": page,
        "page_models": page_models(page.text),
        "csv": list(csv.DictReader(io.StringIO(csv_text))),
        "json": exported,
        "api": api,
    }


async def test_each_owner_best_by_default_every_row_on_request_baselines_all_kept(
    client, services: Services
) -> None:
    await seed(services)
    best = await all_views(client)
    assert best["page"].status_code == 200
    # ada's best only; both baselines; no hidden or private row for a visitor.
    expected = ["ada-best", "bob-one", "org-base-1", "org-base-2"]
    assert best["page_models"] == expected
    assert [r["model"] for r in best["csv"]] == expected
    assert [r["model"] for r in best["json"]["rows"]] == expected
    assert [r["model"] for r in best["api"]["rows"]] == expected
    assert [r["rank"] for r in best["json"]["rows"]] == [1, 2, 3, 4]
    assert best["json"]["per_user"] == "best"
    assert "each owner&#39;s best" in best["page"].text or "each owner's best" in best["page"].text

    every = await all_views(client, "all=1")
    expected_all = ["ada-best", "bob-one", "ada-mid", "ada-low", "org-base-1", "org-base-2"]
    assert every["page_models"] == expected_all
    assert [r["model"] for r in every["csv"]] == expected_all
    assert [r["model"] for r in every["api"]["rows"]] == expected_all
    # The API's own default stays every row (the CLI and scripts read it so).
    api_default = (await client.get("/api/v1/tasks/toy/leaderboard")).json()
    assert [r["model"] for r in api_default["rows"]] == expected_all
    bad = await client.get("/api/v1/tasks/toy/leaderboard?per_user=some")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "per_user"


async def test_hidden_rows_only_for_admins_flagged_and_baselines_marked(
    client, services: Services
) -> None:
    ids = await seed(services)
    visitor = await all_views(client, "all=1")
    for view in ("csv",):
        assert "cyd-hidden" not in [r["model"] for r in visitor[view]]
    assert "cyd-hidden" not in visitor["page"].text
    assert ids["cyd-hidden"] not in visitor["page"].text
    assert "cyd-hidden" not in str(visitor["json"]) and "cyd-hidden" not in str(visitor["api"])

    flagged = next(r for r in visitor["csv"] if r["model"] == "bob-one")
    assert flagged["flagged"] == "True" and flagged["flag_reason"] == "trained on the test set?"
    assert "⚑ flagged: trained on the test set?" in visitor["page"].text
    assert [r["baseline"] for r in visitor["json"]["rows"]].count(True) == 2
    assert re.search(r'<tr data-submission="[0-9a-f]+" class="baseline">', visitor["page"].text)

    # An admin (org) sees the hidden row, marked, on the page, the exports and the API.
    admin = await all_views(client, "all=1", headers=bearer(ids["org"]))
    assert admin["page_models"][0] == "cyd-hidden"
    assert 'class="mark hidden"' in admin["page"].text
    assert admin["json"]["rows"][0]["hidden"] is True
    assert admin["api"]["rows"][0]["hidden"] is True


async def test_private_rows_only_for_their_owner(client, services: Services) -> None:
    ids = await seed(services)
    for headers in ({}, bearer(ids["ada"])):
        views = await all_views(client, "all=1", headers=headers)
        assert "cyd-private" not in views["page"].text
        assert "cyd-private" not in [r["model"] for r in views["csv"]]
        assert "cyd-private" not in str(views["json"]) + str(views["api"])
    owner = await all_views(client, "all=1", headers=bearer(ids["cyd"]))
    assert owner["page_models"][0] == "cyd-private"
    assert 'class="mark private"' in owner["page"].text
    assert owner["json"]["rows"][0]["private"] is True
    assert owner["api"]["rows"][0]["private"] is True
    # And the home page's leader is the visitor's, not the private row.
    home = await client.get("/")
    assert "cyd-private" not in home.text and "cyd-hidden" not in home.text


async def set_rank_only(services: Services) -> None:
    async with services.db.session() as session:
        task = await session.scalar(sa.select(Task).where(Task.slug == "toy"))
        assert task is not None
        task.config = {**task.config, "leaderboard": {"rank_only": True}}
        session.add(task)


async def test_rank_only_task_shows_ranks_and_names_and_no_score_anywhere(
    client, services: Services
) -> None:
    ids = await seed(services)
    await set_rank_only(services)
    # Its owner too: a blind phase hides the scores from everyone, on every view.
    for headers in ({}, bearer(ids["cyd"]), bearer(ids["org"])):
        views = await all_views(client, "all=1", headers=headers)
        assert views["page"].status_code == 200
        table = views["page"].text.split('<table id="leaderboard"', 1)[1].split("</table>")[0]
        assert views["page_models"][:2] != []
        for _, _, acc, _ in BOARD:
            for value in (acc, acc - 0.0213, acc - 0.01, acc + 0.01):
                assert f"{value:.4f}" not in views["page"].text
                assert f"{value:.3f}" not in str(views["json"]) + str(views["api"])
        assert "Dynascore" not in table and "95% CI" not in table
        assert "ranks only" in views["page"].text
        assert list(views["csv"][0]) == [
            "rank",
            "model",
            "submission_id",
            "baseline",
            "flagged",
            "flag_reason",
            "hidden",
            "private",
            "owner",
            "submitted",
        ]
        for rows in (views["json"]["rows"], views["api"]["rows"]):
            assert rows and all(
                not {"score", "dynascore", "metrics", "ci", "ci_low", "datasets", "pvalue"} & set(r)
                for r in rows
            )
        assert views["json"]["rank_only"] is True and views["api"]["rank_only"] is True
    # Nor does a submission's results API tell them, to its owner either; an admin sees them.
    sid = ids["cyd-private"]
    for headers in ({}, bearer(ids["cyd"])):
        results = await client.get(f"/api/v1/submissions/{sid}/results", headers=headers)
        if headers:
            assert results.status_code == 200
            assert results.json()["scores"] == [] and "scores_hidden" in results.json()
        else:
            assert results.status_code == 404  # private: not even there for a visitor
    public = f"/api/v1/submissions/{ids['bob-one']}/results"
    visitor = await client.get(public)
    assert visitor.status_code == 200 and visitor.json()["scores"] == []
    admin = await client.get(public, headers=bearer(ids["org"]))
    assert {s["metric"] for s in admin.json()["scores"]} == {"accuracy", "macro_f1"}
    # Re-ranking would reveal the scores: refused, saying why, on every view.
    api = await client.get("/api/v1/tasks/toy/leaderboard?weights=macro_f1=9")
    assert api.status_code == 400 and api.json()["error"]["field"] == "weights"
    exported = await client.get("/tasks/toy/leaderboard.json?weights=macro_f1=9")
    assert exported.status_code == 400 and "ranks only" in exported.json()["error"]["message"]
    page = await client.get("/tasks/toy?weights=macro_f1=9")
    assert page.status_code == 422 and "ranks only" in page.text
    assert 'name="weights"' not in page.text


async def test_weights_reorder_the_page_and_its_exports_which_keep_the_query(
    client, services: Services
) -> None:
    board = [
        ("ada", "accurate", 0.95, {}),
        ("bob", "balanced", 0.90, {}),
        ("cyd", "cheap", 0.70, {}),
    ]
    await seed(services, board)
    async with services.db.session() as session:
        # macro_f1 that favours `balanced` strongly, so a heavy macro_f1 weight reorders.
        for name, f1 in (("accurate", 0.50), ("balanced", 0.99), ("cheap", 0.60)):
            sid = await session.scalar(sa.select(Submission.id).where(Submission.name == name))
            await session.execute(
                sa.update(Score)
                .where(Score.submission_id == sid, Score.metric == "macro_f1")
                .values(value=f1, ci_low=f1 - 0.01, ci_high=f1 + 0.01)
            )
        await session.execute(sa.update(Task).values(config_sha256="changed"))
    await rebuild_stale_leaderboards(services)
    default = await all_views(client)
    assert default["page_models"][0] == "accurate"
    heavy = await all_views(client, "weights=accuracy%3D1%2Cmacro_f1%3D20")
    assert heavy["page_models"][0] == "balanced"
    assert [r["model"] for r in heavy["csv"]] == heavy["page_models"]
    assert [r["model"] for r in heavy["json"]["rows"]] == heavy["page_models"]
    assert heavy["json"]["weights"] == {"accuracy": 1.0, "macro_f1": 20.0}
    # The export links and the form keep the view's query.
    assert "/tasks/toy/leaderboard.csv?weights=accuracy%3D1%2Cmacro_f1%3D20" in heavy["page"].text
    assert 'value="accuracy=1,macro_f1=20"' in heavy["page"].text
    # Every number of a CSV row is the page's cell, to the four places the page shows.
    for record in heavy["csv"]:
        for key in ("dynascore", "accuracy", "macro_f1", "ci_low", "ci_high", "test/accuracy"):
            assert f"{float(record[key]):.4f}" in heavy["page"].text


async def test_bad_queries_are_clear_errors_never_500(client, services: Services) -> None:
    await seed(services)
    page = await client.get("/tasks/toy?all=maybe")
    assert page.status_code == 422 and "all" in page.text
    csv_bad = await client.get("/tasks/toy/leaderboard.csv?weights=accuracy=heavy")
    assert csv_bad.status_code == 400 and csv_bad.text.startswith("error: weights")
    json_bad = await client.get("/tasks/toy/leaderboard.json?weights=nope=1")
    assert json_bad.status_code == 400 and json_bad.json()["error"]["field"] == "weights"
    missing = await client.get("/tasks/nope/leaderboard.json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_embed_view_is_minimal_and_public(client, services: Services) -> None:
    await seed(services)
    embed = await client.get("/tasks/toy?embed=1")
    assert embed.status_code == 200
    assert "<header>" not in embed.text and 'class="embed"' in embed.text
    assert page_models(embed.text)[0] == "ada-best"
    assert 'target="_top"' in embed.text
    exported = await client.get("/tasks/toy/leaderboard.csv")
    assert exported.headers["access-control-allow-origin"] == "*"


async def test_home_shows_leader_models_activity_and_recent_alerts(
    client, services: Services
) -> None:
    ids = await seed(services)
    async with services.db.session() as session:
        owner = await session.scalar(sa.select(User).where(User.name == "bob"))
        assert owner is not None
        bench = Submission(kind="benchmark", user_id=owner.id, name="nightly", status="done")
        secret = Submission(
            kind="benchmark", user_id=owner.id, name="secret", status="done", private=True
        )
        session.add_all([bench, secret])
        await session.flush()
        series = BenchmarkSeries(identity="a" * 64, benchmark="resnet-nightly")
        session.add(series)
        await session.flush()
        for sub, metric in ((bench, "throughput"), (secret, "secret_metric")):
            session.add(
                BenchmarkAlert(
                    series_id=series.id,
                    metric=metric,
                    rule_key="r0",
                    kind="fired",
                    method="threshold",
                    submission_id=sub.id,
                    detected_id=sub.id,
                    baseline=120.0,
                    value=80.0,
                    change=-40.0,
                    relative_change=-1 / 3,
                )
            )
    home = await client.get("/")
    assert home.status_code == 200
    card = home.text.split('data-task-card="toy"', 1)[1].split("</article>", 1)[0]
    assert f'href="/submissions/{ids["ada-best"]}">ada-best</a> by ada' in card
    # Ranked models a visitor sees: 3 of ada, bob's, 2 baselines (not hidden, not private).
    assert '<dd class="models">6</dd>' in card
    assert "UTC</time>" in card
    alerts = home.text.split('id="alerts"', 1)[1].split("</section>", 1)[0]
    assert "resnet-nightly" in alerts and "throughput" in alerts and "-33.3%" in alerts
    assert "secret_metric" not in alerts
    assert "How to take part" in home.text
