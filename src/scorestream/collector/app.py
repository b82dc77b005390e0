"""``scorestream collect``: the HTTP collector (aiohttp) and its command.

Routes: ``POST /v1/events`` (one event or a batch), ``OPTIONS /v1/events`` (CORS
preflight), ``GET /tracker.js?key=WRITE_KEY``, ``GET /metrics``, ``GET /healthz``.

An answer to ``POST /v1/events`` is given only after Kafka has acknowledged every
event it calls accepted:

* ``200``: every event was acknowledged (``acks=all``);
* ``400``: some events are invalid (listed with the reason); the valid ones were
  acknowledged all the same (status ``ok`` in ``results``);
* ``503`` + ``Retry-After``: Kafka did not acknowledge some valid events (down, or more
  than ``COLLECTOR_MAX_IN_FLIGHT`` events wait for it); ``results`` says which were
  acknowledged anyway (``ok``) and which to send again (``retry``);
* ``401`` unknown write key, ``403`` origin not allowed for the key, ``413`` body or
  batch too large, ``429`` + ``Retry-After`` over the rate limit.

The access log is off: it would store client addresses, which the collector keeps only
when ``COLLECTOR_STORE_CLIENT_ADDRESS`` says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scorestream import clients
from scorestream.collector.intake import Accepted, BodyError, Rejected, parse_body, prepare
from scorestream.collector.keys import RateLimiter, Site, Sites, load_sites, retry_after_seconds
from scorestream.collector.metrics import CollectorMetrics, create
from scorestream.collector.producer import KafkaBridge, Sender
from scorestream.engine.timeutil import US_PER_SECOND
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.pipeline.routing import INPUT_TOPICS
from scorestream.settings import Settings

_log = logging.getLogger("scorestream.collector")

#: replaced by the site's settings when ``tracker.js`` is served
CONFIG_PLACEHOLDER = "/*SCORESTREAM_CONFIG*/{}"
_JS = "application/javascript"


def tracker_source() -> str:
    """The text of ``tracker.js`` as shipped in the package."""
    return resources.files("scorestream.collector").joinpath("tracker.js").read_text("utf-8")


def tracker_for(source: str, site: Site) -> str:
    """``tracker.js`` with the site's settings in place of the placeholder."""
    conf = {"key": site.write_key, "consent": site.consent_required, "emailField": site.email_field}
    # Safe inside any script context: no "</script>", no JS-only line terminators.
    text = json.dumps(conf).replace("<", "\\u003c").replace("\u2028", "\\u2028")
    return source.replace(CONFIG_PLACEHOLDER, text.replace("\u2029", "\\u2029"))


class Collector:
    """The request handlers, with their collaborators passed in."""

    def __init__(
        self,
        settings: Settings,
        sites: Sites,
        sender: Sender,
        metrics: CollectorMetrics,
        *,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.sites = sites
        self.sender = sender
        self.metrics = metrics
        self.clock = clock
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.tracker = tracker_source()
        metrics.in_flight.set_function(lambda: float(sender.in_flight))
        metrics.kafka_writable.set_function(lambda: 1.0 if sender.writable else 0.0)

    # -- helpers -----------------------------------------------------------------------

    def _address(self, request: web.Request) -> str:
        if self.settings.collector_trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            first = forwarded.split(",", 1)[0].strip()
            if first:
                return first
        return request.remote or ""

    def _answer(
        self,
        status: int,
        body: dict[str, Any],
        cors: dict[str, str],
        retry_after: int | None = None,
    ) -> web.Response:
        self.metrics.requests.labels(str(status)).inc()
        headers = dict(cors)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.json_response(body, status=status, headers=headers)

    # -- routes ------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        """``POST /v1/events``: validate, produce, answer once Kafka has acknowledged."""
        origin = request.headers.get("Origin")
        key = request.query.get("key") or request.headers.get("X-Scorestream-Key")
        site = self.sites.get(key)
        if site is None:
            # Readable by a tracker on a known origin, so it can stop retrying.
            cors = _cors(origin) if origin and self.sites.any_allows(origin) else {}
            return self._answer(401, {"error": "unknown or missing write key"}, cors)
        cors = {}
        if origin is not None:
            if not site.allows(origin):
                return self._answer(
                    403, {"error": f"origin {origin} may not send events with this key"}, {}
                )
            cors = _cors(origin)
        limit = self.settings.collector_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._answer(413, {"error": f"body larger than {limit} bytes"}, cors)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer(413, {"error": f"body larger than {limit} bytes"}, cors)
        try:
            items = parse_body(body)
        except BodyError as exc:
            return self._answer(exc.status, {"error": exc.reason}, cors)
        address = self._address(request)
        now = self.clock()
        wait = self.limiter.take(site, address, len(items), now)
        if wait > 0:
            self.metrics.rejected.labels("rate_limited").inc(len(items))
            return self._answer(
                429,
                {"error": f"rate limit of site {site.name!r} exceeded"},
                cors,
                retry_after_seconds(wait),
            )
        return await self._take(site, items, int(now * US_PER_SECOND), address, cors)

    async def _take(
        self, site: Site, items: list[Any], received_us: int, address: str, cors: dict[str, str]
    ) -> web.Response:
        settings = self.settings
        stored = address if settings.collector_store_client_address else None
        results: list[dict[str, Any]] = [{} for _ in items]
        accepted: list[Accepted] = []
        for i, item in enumerate(items):
            done = prepare(
                item, i, received_us, max_bytes=settings.max_message_bytes, client_address=stored
            )
            if isinstance(done, Rejected):
                results[i] = _result(i, done.event_id, "invalid", done.reason)
            else:
                accepted.append(done)
        invalid = len(items) - len(accepted)
        ok = retry = 0
        if accepted:
            refusal = self._refusal(len(accepted))
            if refusal is not None:
                reason, message = refusal
                self.metrics.rejected.labels(reason).inc(len(accepted))
                for a in accepted:
                    results[a.index] = _result(a.index, a.event_id, "retry", message)
                retry = len(accepted)
            else:
                started = time.perf_counter()
                outcomes = await self.sender.send(
                    [(settings.topic(a.topic), a.key, a.value) for a in accepted]
                )
                self.metrics.produce_seconds.observe(time.perf_counter() - started)
                for a, outcome in zip(accepted, outcomes, strict=True):
                    if outcome.ok:
                        results[a.index] = _result(a.index, a.event_id, "ok")
                        ok += 1
                    elif outcome.permanent:
                        results[a.index] = _result(
                            a.index, a.event_id, "invalid", f"Kafka refused it: {outcome.error}"
                        )
                        invalid += 1
                    else:
                        results[a.index] = _result(
                            a.index, a.event_id, "retry", f"not acknowledged: {outcome.error}"
                        )
                        retry += 1
                if retry:
                    self.metrics.rejected.labels("unavailable").inc(retry)
        if ok:
            self.metrics.accepted.labels(site.name).inc(ok)
        if invalid:
            self.metrics.rejected.labels("invalid").inc(invalid)
        body = {"accepted": ok, "invalid": invalid, "retry": retry, "results": results}
        if retry:
            return self._answer(503, body, cors, self.settings.collector_retry_after)
        return self._answer(400 if invalid else 200, body, cors)

    def _refusal(self, count: int) -> tuple[str, str] | None:
        """Why Kafka cannot take ``count`` more events now (None: it can)."""
        if not self.sender.writable:
            return "unavailable", "Kafka cannot take writes now"
        in_flight = self.sender.in_flight
        # A request alone is always let in, so a bound below a batch cannot block it forever.
        if in_flight and in_flight + count > self.settings.collector_max_in_flight:
            return "busy", "too many events wait for Kafka"
        return None

    async def preflight(self, request: web.Request) -> web.Response:
        """``OPTIONS /v1/events``: CORS preflight, allowed for the key's origins only."""
        origin = request.headers.get("Origin")
        key = request.query.get("key")
        site = self.sites.get(key)
        if origin is None:
            allowed = False
        elif site is not None:
            allowed = site.allows(origin)
        else:
            # The key may travel in a header, which a preflight does not show.
            allowed = key is None and self.sites.any_allows(origin)
        if not allowed:
            return web.Response(status=403, text="origin not allowed")
        headers = {
            **_cors(origin or ""),
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, X-Scorestream-Key",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    async def tracker_js(self, request: web.Request) -> web.StreamResponse:
        """``GET /tracker.js?key=WRITE_KEY``: the snippet with its site's settings."""
        site = self.sites.get(request.query.get("key"))
        if site is None:
            return web.Response(
                status=404,
                text="/* scorestream: unknown or missing write key: tracker.js?key=WRITE_KEY */\n",
                content_type=_JS,
            )
        resp = web.Response(
            text=tracker_for(self.tracker, site),
            content_type=_JS,
            headers={"Cache-Control": "public, max-age=300"},
        )
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression()
        return resp

    async def metrics_view(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def health(self, request: web.Request) -> web.Response:
        """``GET /healthz``: 200 while Kafka takes writes, 503 otherwise."""
        if self.sender.writable:
            return web.json_response({"status": "ready", "in_flight": self.sender.in_flight})
        return web.json_response({"status": "kafka unavailable"}, status=503)


def _cors(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Retry-After",
        "Vary": "Origin",
    }


def _result(index: int, event_id: str | None, status: str, error: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "status": status}
    if event_id is not None:
        out["event_id"] = event_id
    if error:
        out["error"] = error
    return out


def build_app(collector: Collector) -> web.Application:
    """The aiohttp application serving the collector's routes."""
    # Bodies up to the limit are read; aiohttp refuses larger ones (answered 413).
    app = web.Application(client_max_size=collector.settings.collector_max_body_bytes)
    app.router.add_post("/v1/events", collector.events)
    app.router.add_route("OPTIONS", "/v1/events", collector.preflight)
    app.router.add_get("/tracker.js", collector.tracker_js)
    app.router.add_get("/metrics", collector.metrics_view)
    app.router.add_get("/healthz", collector.health)
    return app


# ----------------------------------------------------------------------------- command


def check_topics(settings: Settings, timeout: float = 5.0) -> str | None:
    """Whether the input topics exist; a warning if Kafka cannot be asked.

    Raises :class:`UsageError` for missing topics (``topics apply`` first).
    """
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    try:
        names = set(AdminClient(clients.admin(settings)).list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        return f"Kafka at {settings.bootstrap} cannot be asked for topics ({exc}); starting anyway"
    missing = [settings.topic(t) for t in INPUT_TOPICS if settings.topic(t) not in names]
    if missing:
        raise UsageError(
            f"missing input topics on {settings.bootstrap}: {', '.join(missing)} "
            "(run `scorestream topics apply` first)"
        )
    return None


async def serve(settings: Settings, sites: Sites, ready: Callable[[str], None]) -> None:
    """Run the collector until SIGINT or SIGTERM, then deliver what is queued."""
    bridge = KafkaBridge(
        clients.collector_producer(settings),
        max_in_flight=settings.collector_max_in_flight,
        timeout=settings.collector_produce_timeout,
    )
    bridge.start()
    collector = Collector(settings, sites, bridge, create())
    runner = web.AppRunner(build_app(collector), access_log=None, shutdown_timeout=15.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.collector_host, settings.collector_port)
        await site.start()
        ready(f"http://{settings.collector_host}:{settings.collector_port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        left = await asyncio.to_thread(bridge.close, 10.0)
        if left:
            _log.error("collector: %d events were still unacknowledged at exit", left)


def collect_command(args: argparse.Namespace) -> int:
    """``scorestream collect``."""
    settings = Settings.load(config_file=getattr(args, "config", None))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not settings.collector_sites:
        raise UsageError(
            "SCORESTREAM_COLLECTOR_SITES is not set: the collector needs a sites file "
            "(write keys, origins; see docs/cli.md)"
        )
    sites = load_sites(settings.collector_sites)
    warning = check_topics(settings)
    if warning:
        _log.warning("collector: %s", warning)

    def ready(url: str) -> None:
        names = ", ".join(sorted(s.name for s in sites.by_key.values()))
        print(
            f"collector listening on {url} (sites: {names}); snippet: {url}/tracker.js?key=...",
            file=sys.stderr,
            flush=True,
        )

    try:
        asyncio.run(serve(settings, sites, ready))
    except OSError as exc:
        print(f"scorestream: collector cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
