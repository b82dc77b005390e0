"""The board's HTTP side without Kafka: access, login, the worker API call, the live stream.

The feed is replaced by one that reads nothing (the Kafka side is covered by
``tests/integration/test_board.py``); the worker API is a small aiohttp server that
records what the board sends it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from scorestream.access import session_value
from scorestream.board.server import COOKIE, BoardService, Feed, Record, build_app
from scorestream.settings import Settings

TOKEN = "board-test-token"


class QuietFeed(Feed):
    """A feed that reads nothing: records are handed to the service by the test."""

    def open(self) -> None:
        return None

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[Record]], None],
        rebuild_started: Callable[[dict[int, int]], None],
    ) -> None:
        return None

    def stop(self) -> None:
        return None

    def caught_up(self, ends: dict[int, int]) -> bool:
        return True


Scenario = Callable[[TestClient[Any, Any], BoardService, list[dict[str, Any]]], Awaitable[None]]


def run(scenario: Scenario, token: str = TOKEN) -> None:
    """Serve a fake worker API and the board, then run ``scenario`` against the board."""

    async def main() -> None:
        seen: list[dict[str, Any]] = []

        async def contact(request: web.Request) -> web.Response:
            seen.append({"path": request.raw_path, "auth": request.headers.get("Authorization")})
            cid = request.match_info["cid"]
            if cid == "missing":
                return web.json_response({"error": "unknown contact 'missing'"}, status=404)
            return web.json_response(
                {
                    "contact_id": cid,
                    "at": "2026-03-01T10:05:00Z",
                    "scores": {"engagement": 120.0},
                    "tiers": {"engagement": "sales_ready"},
                    "models": {"engagement": {"score": 120.0, "rules": []}},
                    "attributes": {"job_title": "CTO"},
                    "ledger": [],
                }
            )

        worker = web.Application()
        worker.router.add_get("/contacts/{cid}", contact)
        async with TestServer(worker) as worker_server:
            settings = dataclasses.replace(
                Settings(),
                api_token=token,
                board_worker_url=str(worker_server.make_url("")),
            )
            service = BoardService(settings, QuietFeed(settings))
            async with TestClient(TestServer(build_app(service))) as client:
                for _ in range(50):  # the watcher marks the (empty) index loaded
                    if service.loaded:
                        break
                    await asyncio.sleep(0.05)
                await scenario(client, service, seen)

    asyncio.run(main())


def login_query(location: str) -> dict[str, list[str]]:
    """The query of a redirect to the login page (however the server quoted it)."""
    parts = urllib.parse.urlsplit(location)
    assert parts.path == "/login"
    return urllib.parse.parse_qs(parts.query)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_pages_and_api_need_the_token_probes_and_static_files_do_not() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        resp = await client.get("/api/top")
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="scorestream"'
        assert (await client.get("/api/top", headers=bearer("wrong"))).status == 401
        resp = await client.get("/api/top", headers=bearer())
        assert resp.status == 200
        assert (await resp.json())["loaded"] is True
        assert resp.headers["Cache-Control"] == "no-store"
        resp = await client.get("/contact/c-1?x=1", allow_redirects=False)
        assert resp.status == 303
        assert login_query(resp.headers["Location"]) == {"next": ["/contact/c-1?x=1"]}
        assert (await client.get("/api/stream")).status == 401
        assert (await client.get("/healthz")).status == 200
        resp = await client.get("/static/board.js")
        assert resp.status == 200
        assert "EventSource" in await (await client.get("/static/common.js")).text()
        resp = await client.get("/", headers=bearer())
        assert resp.status == 200
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"

    run(scenario)


def test_login_exchanges_the_token_for_a_session_cookie() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        resp = await client.post(
            "/login", data={"token": "wrong", "next": "/contact/c-1"}, allow_redirects=False
        )
        assert resp.status == 303
        assert login_query(resp.headers["Location"]) == {
            "next": ["/contact/c-1"],
            "failed": ["1"],
        }
        assert COOKIE not in resp.cookies
        resp = await client.post(
            "/login", data={"token": TOKEN, "next": "/contact/c-1"}, allow_redirects=False
        )
        assert resp.status == 303
        assert resp.headers["Location"] == "/contact/c-1"
        cookie = resp.cookies[COOKIE]
        assert cookie.value == session_value(TOKEN)
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        # the client's cookie jar now carries the session
        assert (await client.get("/api/top")).status == 200
        assert (await client.get("/", allow_redirects=False)).status == 200

    run(scenario)


def test_login_never_redirects_off_the_board() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            resp = await client.post(
                "/login", data={"token": TOKEN, "next": target}, allow_redirects=False
            )
            assert resp.headers["Location"] == "/", target

    run(scenario)


def test_the_contact_page_data_comes_from_the_worker_with_the_token() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        service.deliver(
            [
                (
                    "scores",
                    0,
                    0,
                    {
                        "contact_id": "c/1",
                        "scores": {"engagement": 60.0},
                        "tiers": {"engagement": "mql"},
                        "updated_at": "2026-03-01T10:00:00Z",
                        "anonymous": False,
                    },
                )
            ]
        )
        resp = await client.get("/api/contacts/c%2F1", headers=bearer())
        doc = await resp.json()
        assert seen == [{"path": "/contacts/c%2F1", "auth": f"Bearer {TOKEN}"}]
        assert doc["worker_status"] == 200
        assert doc["contact"]["attributes"] == {"job_title": "CTO"}
        assert doc["history"] == [
            {
                "at": "2026-03-01T10:00:00Z",
                "model": "engagement",
                "score": 60.0,
                "kind": "score",
                "threshold": None,
            }
        ]
        doc = await (await client.get("/api/contacts/missing", headers=bearer())).json()
        assert (doc["worker_status"], doc["contact"]) == (404, None)
        assert doc["error"] == "unknown contact 'missing'"

    run(scenario)


def test_without_a_token_the_board_is_open_and_sends_none_to_the_worker() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        assert (await client.get("/api/top")).status == 200
        await client.get("/api/contacts/c-1")
        assert seen == [{"path": "/contacts/c-1", "auth": None}]

    run(scenario, token="")


def test_crossings_reach_open_pages_as_server_sent_events() -> None:
    async def scenario(client: Any, service: BoardService, seen: list[Any]) -> None:
        resp = await client.get("/api/stream", headers=bearer())
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"retry: 2000")
        crossing = {
            "crossing_id": "c-9:engagement:mql:1",
            "contact_id": "c-9",
            "model": "engagement",
            "threshold": "mql",
            "direction": "up",
            "score": 55.0,
            "previous_score": 40.0,
            "occurred_at": "2026-03-01T10:00:00Z",
        }
        service.deliver([("leads", 0, 0, crossing)])
        service.deliver([("leads", 0, 0, crossing)])  # a redelivery is not sent again
        message = (await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)).decode()
        assert message.startswith("event: crossing\ndata: ")
        assert '"crossing_id":"c-9:engagement:mql:1"' in message
        assert len(service.board.crossings()) == 1
        resp.close()

    run(scenario)
