"""``scorestream simulate``: realistic synthetic traffic for the event topics.

People start as anonymous visitors (a tracker cookie), read the blog, look at pricing,
download e-books and sign up for webinars; submitting a form identifies them and brings
a profile (job title, company size, industry, country). Marketing sends them e-mails,
some of which they open. A few are keen buyers who end up on the contact form; some
unsubscribe. The same seed gives the same traffic; with ``--start`` event times are
simulated (deterministic files for ``scorestream score``), without it they are now.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from confluent_kafka import Producer

from scorestream import clients
from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts
from scorestream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from scorestream.pipeline.routing import topic_for
from scorestream.settings import Settings

TITLES = [
    "CEO",
    "CTO",
    "VP Sales",
    "Head of Marketing",
    "Engineer",
    "Analyst",
    "Student",
    "Consultant",
]
INDUSTRIES = ["software", "saas", "fintech", "retail", "manufacturing", "telecom", "education"]
COUNTRIES = ["DE", "PL", "FR", "GB", "US", "BR", "IN", "NL"]
BLOG = ["/blog/lead-scoring-101", "/blog/kafka-for-marketers", "/blog/mql-vs-sql", "/blog/decay"]
PRICING = ["/pricing", "/pricing/team", "/pricing/enterprise"]
OTHER = ["/", "/about", "/careers", "/docs/getting-started"]


@dataclass
class Person:
    """One simulated visitor."""

    index: int
    anon: str
    contact: str
    intent: float  # 0..1: how keen to buy
    known: bool = False
    unsubscribed: bool = False
    campaigns: list[str] = field(default_factory=list)


class Traffic:
    """An endless, seeded stream of event dictionaries."""

    def __init__(self, people: int, seed: int, start_us: int | None, rate: float) -> None:
        self.rng = random.Random(seed)
        self.people = [
            Person(i, f"anon-{seed}-{i:05d}", f"c-{i:05d}", self.rng.betavariate(1.2, 4.0))
            for i in range(people)
        ]
        self.start_us = start_us
        self.step_us = int(US_PER_SECOND / rate) if rate > 0 else 1000
        self.count = 0
        self.campaign = 0

    def now_us(self) -> int:
        """Event time of the next event: simulated, or the wall clock."""
        if self.start_us is None:
            return int(time.time() * US_PER_SECOND)
        return self.start_us + self.count * self.step_us

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        while True:
            if rng.random() < 0.01:
                yield from self._campaign()
                continue
            weights = [0.2 + p.intent for p in self.people]
            person = rng.choices(self.people, weights)[0]
            yield from self._act(person)

    def _event(
        self, person: Person, kind: str, props: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self.count += 1
        ev: dict[str, Any] = {
            "event_id": f"sim-{self.count:09d}-{self.rng.getrandbits(32):08x}",
            "type": kind,
        }
        if person.known:
            ev["contact_id"] = person.contact
        else:
            ev["anonymous_id"] = person.anon
        ev["occurred_at"] = format_ts(self.now_us())
        if props:
            ev["properties"] = props
        return ev

    def _act(self, p: Person) -> Iterator[dict[str, Any]]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            pool = PRICING if rng.random() < p.intent else (BLOG if rng.random() < 0.6 else OTHER)
            yield self._event(p, "page_view", {"url": rng.choice(pool), "title": "page"})
        elif roll < 0.55:
            form = (
                "contact"
                if rng.random() < p.intent * 0.6
                else rng.choice(["ebook-guide", "webinar-q4", "newsletter"])
            )
            yield self._event(
                p, "form_submit", {"form_id": form, "fields": {"email": f"{p.contact}@example.com"}}
            )
            if not p.known:
                p.known = True
                ident = self._event(p, "identify")
                ident["anonymous_id"] = p.anon
                yield ident
                yield self._event(p, "profile_update", {"attributes": self._profile()})
        elif roll < 0.75 and p.known and p.campaigns:
            campaign = rng.choice(p.campaigns)
            if rng.random() < 0.5 + p.intent / 2:
                yield self._event(p, "email_open", {"campaign_id": campaign})
                if rng.random() < p.intent:
                    yield self._event(
                        p, "email_click", {"campaign_id": campaign, "link_url": "/pricing"}
                    )
            elif not p.unsubscribed and rng.random() < 0.05:
                p.unsubscribed = True
                yield self._event(p, "email_unsubscribe", {"campaign_id": campaign})
        elif roll < 0.85:
            kind = rng.choice(
                ["cart_add", "product_review_view", "product_compare", "checkout_start"]
            )
            yield self._event(
                p,
                kind,
                {
                    "product_id": f"sku-{rng.randint(1, 50)}",
                    "value": round(rng.uniform(10, 900), 2),
                    "currency": "EUR",
                },
            )
        elif roll < 0.9 and p.known:
            yield self._event(p, "profile_update", {"attributes": self._profile()})
        else:
            yield self._event(p, "page_view", {"url": rng.choice(OTHER)})

    def _campaign(self) -> Iterator[dict[str, Any]]:
        self.campaign += 1
        name = f"cmp-{self.campaign:04d}"
        # A campaign reaches a sample of the known, subscribed people (at most 25), so that
        # e-mails are a share of the traffic, not most of it.
        audience = [p for p in self.people if p.known and not p.unsubscribed]
        for p in self.rng.sample(audience, min(25, len(audience))):
            p.campaigns = [*p.campaigns[-4:], name]
            yield self._event(
                p, "email_sent", {"campaign_id": name, "message_id": f"{name}-{p.index}"}
            )

    def _profile(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "job_title": rng.choice(TITLES),
            "company_size": rng.choice([5, 20, 60, 150, 250, 800, 5000]),
            "industry": rng.choice(INDUSTRIES),
            "country": rng.choice(COUNTRIES),
        }


BAD_MESSAGES: list[bytes] = [
    b"this is not json",
    b'{"event_id": "x", "type": "page_view"}',
    b'{"event_id": 42, "type": "page_view", "contact_id": "c", '
    b'"occurred_at": "2026-01-01T00:00:00Z", "properties": {"url": "/"}}',
    b'{"event_id": "x", "type": "page_view", "contact_id": "c", '
    b'"occurred_at": "yesterday", "properties": {"url": "/"}}',
    b"\x00\xff\xfe binary \x80",
    b"[]",
]


def simulate_command(args: argparse.Namespace) -> int:
    """Publish (or write) simulated traffic."""
    if args.contacts < 1:
        raise UsageError("--contacts: must be >= 1")
    if not 0.0 <= args.bad_ratio < 1.0:
        raise UsageError("--bad-ratio: must be in [0, 1)")
    settings = Settings.load(config_file=args.config)
    start = parse_ts(args.start) if getattr(args, "start", None) else None
    traffic = Traffic(args.contacts, args.seed, start, args.rate)
    out: IO[str] | None = None
    if args.out:
        out = open(args.out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    elif args.dry_run:
        out = sys.stdout
    producer = None
    if not args.dry_run:
        producer = Producer(clients.event_producer(settings))
    rng = random.Random(args.seed + 1)
    sent = bad = 0
    began = time.monotonic()
    try:
        for ev in traffic:
            if args.events and sent >= args.events:
                break
            if args.duration and time.monotonic() - began >= args.duration:
                break
            line = json.dumps(ev, separators=(",", ":"))
            if out is not None:
                out.write(line + "\n")
            if producer is not None:
                key = str(ev.get("contact_id") or ev.get("anonymous_id")).encode()
                topic = settings.topic(topic_for(ev["type"]))
                _produce(producer, topic, key, line.encode())
                if args.bad_ratio and rng.random() < args.bad_ratio:
                    _produce(producer, topic, None, rng.choice(BAD_MESSAGES))
                    bad += 1
            sent += 1
            if args.rate > 0 and start is None:
                delay = began + sent / args.rate - time.monotonic()
                if delay > 0:
                    if producer is not None:
                        producer.poll(0)
                    time.sleep(delay)
    except KeyboardInterrupt:
        pass
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
    if producer is not None:
        left = producer.flush(30)
        if left:
            print(f"scorestream: {left} events not delivered", file=sys.stderr)
            return EXIT_FAILURE
    print(
        f"simulated {sent} events" + (f" and {bad} invalid messages" if bad else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def _produce(producer: Any, topic: str, key: bytes | None, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.1)
