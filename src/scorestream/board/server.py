"""The lead board's process: a Kafka feed, the index, an aiohttp server, the pages.

Why its own process rather than pages in every worker: a worker owns only some
partitions, while the hottest contacts must be ranked across all of them; the board
reads the compacted ``contacts.scores`` of every partition instead, and a worker stays
free of a second consumer and of browsers holding streams open. It needs nothing but
the published topics and one worker's API, so it can run anywhere and in any number.

* :class:`Feed` (a thread, confluent-kafka) assigns itself every partition of
  ``contacts.scores`` from the start (the latest state of every contact: the index is
  complete once it has read to the end offsets seen at start) and of
  ``leads.sales_ready`` from the last :data:`LEADS_BACKLOG` records per partition,
  decodes records and hands them in batches to the event loop, which alone touches
  the :class:`~scorestream.board.index.Board`.
* Pages: ``/`` (hottest contacts per model, crossings as they arrive through
  Server-Sent Events on ``/api/stream``, search), ``/contact/{id}`` (chart of the
  score history the board has seen, the rules behind the points and the attributes,
  from a worker's ``GET /contacts/{id}``, passing the API token on).
* Access: with ``SCORESTREAM_API_TOKEN`` set, everything but ``/healthz``, ``/login``
  and the static files needs ``Authorization: Bearer <token>`` or the session cookie
  that ``/login`` sets (a browser cannot add the header to a page load or an
  EventSource). Without a token the board binds to loopback only. No access log: paths
  carry contact ids, which stay out of logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from scorestream import clients
from scorestream.access import CHALLENGE, bearer_ok, check_bind, cookie_ok, session_value
from scorestream.board.index import Board
from scorestream.errors import ScorestreamError, UsageError
from scorestream.settings import Settings

log = logging.getLogger("scorestream.board")
_kafka_log = logging.getLogger("scorestream.board.librdkafka")

SCORES_TOPIC = "contacts.scores"
LEADS_TOPIC = "leads.sales_ready"
#: crossings per partition read at start, so the live list is not empty after a restart
LEADS_BACKLOG = 500
METADATA_TIMEOUT = 15.0
#: seconds between two readings of the compacted topic for a top list that ran short
REBUILD_PAUSE = 60.0
#: how often open pages are told that a top list changed (at most)
TOP_NOTICE_INTERVAL = 1.0
#: SSE comment line that keeps proxies from closing a quiet stream
KEEPALIVE_SECONDS = 15.0
#: messages queued for one open page before it is dropped (it reconnects)
SUBSCRIBER_QUEUE = 1000
COOKIE = "scorestream_board"
COOKIE_MAX_AGE = 12 * 3600
STATIC = Path(__file__).with_name("static")
#: paths served without the token: probes, the login form and the (data-free) static files
OPEN_PATHS = frozenset({"/healthz", "/login"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: a record handed to the loop: (topic kind "scores"/"leads", partition, offset, document)
Record = tuple[str, int, int, dict[str, Any]]


class BoardError(ScorestreamError):
    """The board cannot read its topics; the message says why."""


class Feed:
    """Reads both output topics in a thread; the event loop gets decoded batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scores_topic = settings.topic(SCORES_TOPIC)
        self.leads_topic = settings.topic(LEADS_TOPIC)
        self._consumer: Any = None
        self._stop = threading.Event()
        self._rebuild = threading.Event()
        self._thread: threading.Thread | None = None
        #: end offsets of contacts.scores seen at start, per partition with records
        self.start_ends: dict[int, int] = {}

    def open(self) -> None:
        """Connect and assign every partition; raise :class:`BoardError` if impossible."""
        from confluent_kafka import (  # noqa: PLC0415 (slow import)
            Consumer,
            KafkaException,
            TopicPartition,
        )

        # A fresh group id: this reader never joins its group nor commits.
        group = f"scorestream-board-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(clients.board_reader(self.settings, group, _kafka_log))
        deadline = time.monotonic() + METADATA_TIMEOUT
        try:
            assign = []
            for topic in (self.scores_topic, self.leads_topic):
                try:
                    meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
                    info = meta.topics.get(topic)
                    if info is None or info.error is not None or not info.partitions:
                        raise BoardError(
                            f"topic {topic} does not exist (run `scorestream topics apply`)"
                        )
                    for p in sorted(info.partitions):
                        # A topic created moments before may not answer yet: asked
                        # again on transient errors until the opening's deadline.
                        low, high = clients.watermarks(
                            consumer, TopicPartition(topic, p), deadline - time.monotonic()
                        )
                        if topic == self.scores_topic:
                            start = low
                            if high > low:
                                self.start_ends[p] = high
                        else:
                            start = max(low, high - LEADS_BACKLOG)
                        assign.append(TopicPartition(topic, p, start))
                except KafkaException as exc:
                    raise BoardError(
                        f"cannot reach Kafka at {self.settings.bootstrap} within "
                        f"{METADATA_TIMEOUT:.0f} s: {exc.args[0].str()}"
                    ) from None
            consumer.assign(assign)
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[Record]], None],
        rebuild_started: Callable[[dict[int, int]], None],
    ) -> None:
        """Start reading in a thread; batches go to ``deliver`` on ``loop``."""
        assert self._consumer is not None, "open() first"
        self._thread = threading.Thread(
            target=self._run, args=(loop, deliver, rebuild_started), name="board-feed", daemon=True
        )
        self._thread.start()

    def request_rebuild(self) -> None:
        """Ask the thread to read ``contacts.scores`` again from its start."""
        self._rebuild.set()

    def stop(self) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[Record]], None],
        rebuild_started: Callable[[dict[int, int]], None],
    ) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            if self._rebuild.is_set():
                self._rebuild.clear()
                ends = self._seek_scores_to_start()
                loop.call_soon_threadsafe(rebuild_started, ends)
            try:
                messages = consumer.consume(1000, 0.2)
            except RuntimeError:  # closed under us at shutdown
                return
            batch: list[Record] = []
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        log.error("board consumer failed: %s", error.str())
                        return
                    continue
                try:
                    doc = json.loads(msg.value() or b"")
                except ValueError:
                    continue  # not ours to judge; the worker writes only JSON objects
                if not isinstance(doc, dict):
                    continue
                kind = "scores" if msg.topic() == self.scores_topic else "leads"
                batch.append((kind, msg.partition(), msg.offset(), doc))
            if batch:
                try:
                    loop.call_soon_threadsafe(deliver, batch)
                except RuntimeError:  # the loop is closed: shutting down
                    return

    def _seek_scores_to_start(self) -> dict[int, int]:
        from confluent_kafka import TopicPartition  # noqa: PLC0415

        consumer = self._consumer
        ends: dict[int, int] = {}
        for p in self.start_ends.keys() | self._scores_partitions():
            low, high = clients.watermarks(
                consumer, TopicPartition(self.scores_topic, p), METADATA_TIMEOUT
            )
            ends[p] = high if high > low else 0
            consumer.seek(TopicPartition(self.scores_topic, p, low))
        return ends

    def _scores_partitions(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == self.scores_topic}

    def caught_up(self, ends: dict[int, int]) -> bool:
        """True when the consumer's position in ``contacts.scores`` reached ``ends``."""
        from confluent_kafka import TopicPartition  # noqa: PLC0415

        if not ends:
            return True
        tps = [TopicPartition(self.scores_topic, p) for p in ends]
        positions = self._consumer.position(tps)
        return all(tp.offset >= 0 and tp.offset >= ends[tp.partition] for tp in positions)


class BoardService:
    """The board's state on the event loop: index, open pages, the worker's API."""

    def __init__(self, settings: Settings, feed: Feed, board: Board | None = None) -> None:
        self.settings = settings
        self.feed = feed
        self.board = board if board is not None else Board(settings.board_top)
        self.token = settings.api_token
        self.worker_url = (
            settings.board_worker_url.rstrip("/") or f"http://127.0.0.1:{settings.web_port}"
        )
        self.subscribers: set[asyncio.Queue[str | None]] = set()
        self.loaded = False
        self._top_dirty = False
        self._last_rebuild = -REBUILD_PAUSE
        self._http: ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ feed

    def deliver(self, batch: list[Record]) -> None:
        """Apply records read by the feed (on the loop)."""
        board = self.board
        for kind, partition, offset, doc in batch:
            if kind == "scores":
                self._top_dirty |= board.apply_score(doc, partition, offset)
            else:
                shown = board.apply_crossing(doc)
                if shown is not None:
                    self.broadcast("crossing", shown)
        now = time.monotonic()
        if self.loaded and board.needs_rebuild() and now - self._last_rebuild >= REBUILD_PAUSE:
            self._last_rebuild = now
            log.info("a top list ran short: reading %s again", self.feed.scores_topic)
            self.feed.request_rebuild()

    def rebuild_started(self, ends: dict[int, int]) -> None:
        """The feed reads the compacted topic again from its start (on the loop)."""
        self.board.begin_rebuild(ends)

    def broadcast(self, event: str, data: dict[str, Any]) -> None:
        """Send one Server-Sent Event to every open page."""
        message = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for queue in list(self.subscribers):
            if queue.full():
                # A page that does not read: drop it rather than buffer without bound;
                # its EventSource reconnects and reloads the lists.
                self.subscribers.discard(queue)
                continue
            queue.put_nowait(message)

    async def _watch(self) -> None:
        """Mark the index loaded once caught up; tell pages when top lists changed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.2 if not self.loaded else TOP_NOTICE_INTERVAL)
            if not self.loaded:
                done = await loop.run_in_executor(None, self.feed.caught_up, self.feed.start_ends)
                if done:
                    self.loaded = True
                    self._top_dirty = True
                    log.info(
                        "index loaded: %d score records, %d crossings read",
                        self.board.scores_read,
                        self.board.crossings_read,
                    )
            if self._top_dirty and self.loaded:
                self._top_dirty = False
                self.broadcast("top", {})

    # ------------------------------------------------------------------ lifecycle

    async def on_startup(self, app: web.Application) -> None:
        """Start the feed thread and the watcher."""
        self._http = ClientSession(timeout=ClientTimeout(total=5))
        self.feed.start(asyncio.get_running_loop(), self.deliver, self.rebuild_started)
        self._tasks.append(asyncio.create_task(self._watch()))

    async def on_shutdown(self, app: web.Application) -> None:
        """End the open event streams so that shutdown does not wait for them."""
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def on_cleanup(self, app: web.Application) -> None:
        """Stop the watcher, the feed and the HTTP client."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.get_running_loop().run_in_executor(None, self.feed.stop)
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ worker API

    async def worker_contact(self, contact_id: str) -> tuple[int, dict[str, Any]]:
        """A worker's ``GET /contacts/{id}``: (HTTP status, document); 502 if unreachable."""
        assert self._http is not None
        url = f"{self.worker_url}/contacts/{urllib.parse.quote(contact_id, safe='')}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._http.get(url, headers=headers) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (ClientError, TimeoutError, ValueError) as exc:
            return 502, {"error": f"worker API at {self.worker_url}: {type(exc).__name__}"}
        if not isinstance(body, dict):
            return 502, {"error": "the worker answered something that is not a JSON object"}
        return status, body


# ---------------------------------------------------------------------- HTTP


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _allowed(request: web.Request, token: str) -> bool:
    return bearer_ok(request.headers.get("Authorization"), token) or cookie_ok(
        request.cookies.get(COOKIE), token
    )


def _safe_next(value: str | None) -> str:
    """Where to go after login: a path on this board only (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def build_app(service: BoardService) -> web.Application:
    """The aiohttp application: pages, API, event stream, login, static files."""
    token = service.token

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path in OPEN_PATHS or path.startswith("/static/") or _allowed(request, token)):
            if path.startswith("/api/"):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": CHALLENGE, **SECURITY_HEADERS},
                )
            target = "/login?" + urllib.parse.urlencode({"next": request.path_qs})
            raise web.HTTPSeeOther(target, headers=SECURITY_HEADERS)
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        if path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    app = web.Application(middlewares=[guard])
    board = service.board

    async def page(name: str) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    async def index(request: web.Request) -> web.StreamResponse:
        return await page("index.html")

    async def contact_page(request: web.Request) -> web.StreamResponse:
        return await page("contact.html")

    async def login_form(request: web.Request) -> web.StreamResponse:
        return await page("login.html")

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        target = _safe_next(str(form.get("next", "/")))
        given = str(form.get("token", ""))
        if token and not bearer_ok(f"Bearer {given}", token):
            await asyncio.sleep(0.5)  # slows guessing; a long random token does the rest
            query = urllib.parse.urlencode({"next": target, "failed": "1"})
            raise web.HTTPSeeOther(f"/login?{query}")
        response = web.HTTPSeeOther(target)
        if token:
            response.set_cookie(
                COOKIE,
                session_value(token),
                max_age=COOKIE_MAX_AGE,
                path="/",
                httponly=True,
                samesite="Strict",
                secure=request.secure,
            )
        raise response

    async def healthz(request: web.Request) -> web.StreamResponse:
        body = {
            "status": "ready" if service.loaded else "loading",
            "scores_read": board.scores_read,
            "crossings_read": board.crossings_read,
        }
        return web.json_response(body, status=200 if service.loaded else 503)

    async def top(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {**board.top_lists(), "loaded": service.loaded, "rebuilding": board.rebuilding()}
        )

    async def crossings(request: web.Request) -> web.StreamResponse:
        return web.json_response({"crossings": board.crossings()[:100]})

    async def search(request: web.Request) -> web.StreamResponse:
        return web.json_response({"matches": board.suggest(request.query.get("q", ""))})

    async def contact(request: web.Request) -> web.StreamResponse:
        cid = request.match_info["contact_id"]
        status, doc = await service.worker_contact(cid)
        return web.json_response(
            {
                "contact_id": cid,
                "worker_status": status,
                "contact": doc if status == 200 else None,
                "error": None if status == 200 else doc.get("error", f"HTTP {status}"),
                "history": board.contact_history(cid),
                "crossings": board.crossings(cid),
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # no proxy buffering of a live stream
                **SECURITY_HEADERS,
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        service.subscribers.add(queue)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    message = ": keep-alive\n\n"
                if message is None or queue not in service.subscribers:
                    break
                await response.write(message.encode())
        except (ConnectionError, asyncio.CancelledError):
            pass  # the page went away
        finally:
            service.subscribers.discard(queue)
        return response

    app.router.add_get("/", index)
    app.router.add_get("/contact/{contact_id}", contact_page)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/top", top)
    app.router.add_get("/api/crossings", crossings)
    app.router.add_get("/api/search", search)
    app.router.add_get("/api/contacts/{contact_id}", contact)
    app.router.add_get("/api/stream", stream)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.on_cleanup.append(service.on_cleanup)
    return app


def board_address(settings: Settings) -> str:
    """The board's address as a browser on this machine reaches it."""
    host = settings.board_host
    if host in {"", "0.0.0.0", "::"}:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.board_port}/"


def board_command(args: argparse.Namespace) -> int:
    """``scorestream board``: serve the lead board until interrupted."""
    settings = Settings.load(config_file=getattr(args, "config", None))
    check_bind(settings.board_host, settings, "board")
    if settings.board_top < 1:
        raise UsageError("SCORESTREAM_BOARD_TOP: must be >= 1")
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    feed = Feed(settings)
    try:
        feed.open()
    except BoardError as exc:
        print(f"scorestream: {exc}", file=sys.stderr)
        return 1
    service = BoardService(settings, feed)
    app = build_app(service)
    print(
        f"lead board on {board_address(settings)} (contacts from {service.worker_url})",
        flush=True,
    )
    try:
        web.run_app(
            app,
            host=settings.board_host,
            port=settings.board_port,
            access_log=None,  # request paths carry contact ids: not for logs
            print=None,
            shutdown_timeout=5.0,
        )
    except OSError as exc:
        print(
            f"scorestream: board: cannot listen on {settings.board_host}:"
            f"{settings.board_port}: {exc.strerror}",
            file=sys.stderr,
        )
        feed.stop()
        return 1
    return 0
