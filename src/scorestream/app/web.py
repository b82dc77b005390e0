"""The worker's HTTP API on Faust's web server: health, metrics, status, contacts.

``GET /contacts/{id}`` is answered by the worker that owns the contact's partition;
another worker proxies the request there once (``local=1`` stops loops).

With ``SCORESTREAM_API_TOKEN`` set, ``/contacts`` and ``/status`` answer 401 unless the
request carries ``Authorization: Bearer <token>`` (a proxied request passes it on);
``/healthz`` and ``/metrics`` stay open for orchestrators and Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scorestream.access import CHALLENGE, bearer_ok
from scorestream.engine.state import ContactState
from scorestream.engine.timeutil import parse_ts
from scorestream.pipeline.routing import REPARTITION, partition_for

if TYPE_CHECKING:
    from scorestream.app.worker import Runtime


def add_views(app: Any, runtime: Runtime) -> None:
    """Register the API's pages on the Faust app."""
    own_url = str(app.conf.canonical_url).rstrip("/")
    token = runtime.settings.api_token

    def denied(view: View, request: Request) -> Response | None:
        """A 401 answer unless the request may read (no token set, or the right one)."""
        if bearer_ok(request.headers.get("Authorization"), token):
            return None
        return view.json(
            {"error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": CHALLENGE},
        )

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            if runtime.ready:
                parts = sorted(runtime.processor.parts)
                return self.json({"status": "ready", "partitions": parts})
            return self.json({"status": "starting"}, status=503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            runtime.export_metrics()
            body = generate_latest(runtime.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            return self.json(runtime.status())

    @app.page("/contacts/{contact_id}")
    class ContactView(View):
        async def get(self, request: Request, contact_id: str) -> Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            processor = runtime.processor
            state = processor.lookup(contact_id)
            if state is None and not request.query.get("local"):
                owner = owner_url(app, runtime, contact_id)
                if owner is None:
                    return self.json({"error": "no owner known (rebalancing?)"}, status=503)
                if owner.rstrip("/") != own_url:
                    query = {**request.query, "local": "1"}
                    # every worker shares the token: the owner checks it again
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    try:
                        async with app.http_client.get(
                            f"{owner.rstrip('/')}/contacts/{contact_id}",
                            params=query,
                            headers=headers,
                        ) as resp:
                            return self.bytes(
                                await resp.read(),
                                content_type="application/json",
                                status=resp.status,
                            )
                    except Exception as exc:  # the owner is down or moving
                        return self.json(
                            {"error": f"owner {owner} not reachable: {exc}"}, status=503
                        )
            if state is None:
                return self.json({"error": f"unknown contact {contact_id!r}"}, status=404)
            if state.alias is not None:
                return self.json({"contact_id": contact_id, "alias_of": state.alias})
            clock = state.clock or 0
            at = clock
            if "at" in request.query:
                try:
                    at = parse_ts(request.query["at"])
                except ValueError as exc:
                    return self.json({"error": f"at: {exc}"}, status=400)
                if at < clock:
                    return self.json(
                        {"error": "at is before the contact's last change", "clock": clock},
                        status=409,
                    )
            engine = processor.engine
            view = ContactState.from_bytes(state.to_bytes()) if at > clock else state
            if at > clock:
                engine.advance(view, at)
            doc = engine.explain(view, at)
            doc["scores"] = engine.scores(view, at)
            doc["tiers"] = engine.tiers(view)
            return self.json(doc)


def owner_url(app: Any, runtime: Runtime, key: str) -> str | None:
    """The web address of the worker that owns ``key``'s partition, from the assignment."""
    partition = partition_for(key, runtime.topology.partitions)
    topic = runtime.topology.real(REPARTITION)
    for url, topics in app.assignor.external_topics_metadata().items():
        if partition in topics.get(topic, ()):
            return str(url)
    return None
