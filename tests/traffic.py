"""Seeded traffic for the live-vs-offline tests: journeys that exercise order.

Shared by the unit tests (several processors over a fake cluster) and the integration
tests (real broker).

Visitors browse anonymously (blog, pricing, carts), many are identified by a form (an
``identify`` keyed by the contact, while their earlier events are keyed by the cookie,
so the two usually live in different partitions), some keep browsing with only the
cookie after that, marketing e-mails arrive and are sometimes opened within the 30 min
window, profiles change (a country removed again), and custom events of other product
lines (trials that a payment may convert within 45 min, payments, app installs) come on
``events.custom``, so every input topic carries events. Event times are whole seconds, so
events of one contact on different topics often share a timestamp; a share of events is
published late (after newer events of the same topic).
"""

from __future__ import annotations

import random
from typing import Any

from scorestream.engine.timeutil import US_PER_SECOND, format_ts, parse_ts

#: custom events of other product lines, and the shop's orders and removals, with the
#: properties each carries (drawn in this order)
PRODUCT_PROPS: dict[str, dict[str, Any]] = {
    "trial_started": {"plan": "monthly"},
    "subscription_payment": {"plan": "monthly", "amount": 9.99},
    "app_download": {"platform": "ios"},
    "purchase": {"product_id": "p1", "value": 40},
    "cart_remove": {"product_id": "p1"},
}


def journeys(
    people: int,
    seed: int,
    start: str = "2026-03-02T08:00:00Z",
    hours: float = 6.0,
    late_share: float = 0.02,
    cookie_after_identify: float = 0.3,
    identify_delay: tuple[int, ...] = (0, 0, 1),
) -> list[dict[str, Any]]:
    """Events of ``people`` journeys in publishing order (mostly event-time order)."""
    rng = random.Random(seed)
    t0 = parse_ts(start) // US_PER_SECOND
    span = int(hours * 3600)
    timed: list[tuple[int, int, dict[str, Any]]] = []
    seq = 0

    def add(at: int, raw: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        raw["event_id"] = f"{seed}-{seq:07d}"
        raw["occurred_at"] = format_ts(at * US_PER_SECOND)
        timed.append((at, seq, raw))

    for i in range(people):
        anon = f"v-{seed}-{i:04d}"
        contact = f"c-{seed}-{i:04d}"
        t = t0 + rng.randrange(span // 2)
        known = False

        for _ in range(rng.randrange(4, 16)):
            t += rng.choice([0, 0, 1, 5, 30, 120, 600, 1200])
            roll = rng.random()
            cookie = known and rng.random() < cookie_after_identify  # still under the cookie
            browse = _ids(known and not cookie, contact, anon)
            ids = _ids(known, contact, anon)
            if roll < 0.35:
                url = rng.choice(
                    ["/blog/a", "/blog/b", "/blog/c", "/pricing", "/pricing/team", "/"]
                )
                add(
                    t,
                    {
                        "type": "page_view",
                        **browse,
                        "properties": {"url": url},
                    },
                )
            elif roll < 0.5:
                kind = rng.choice(["cart_add", "cart_add", "product_compare", "checkout_start"])
                props = {"product_id": f"p{rng.randrange(9)}", "value": rng.randrange(10, 500)}
                add(
                    t,
                    {
                        "type": kind,
                        **browse,
                        "properties": props,
                    },
                )
                if kind == "cart_add" and rng.random() < 0.3:
                    add(
                        t + rng.randrange(60, 3600),
                        {"type": "cart_abandon", **browse},
                    )
            elif roll < 0.62 and not known:
                form = rng.choice(["contact", "ebook", "webinar"])
                add(
                    t,
                    {
                        "type": "form_submit",
                        **ids,
                        "properties": {"form_id": form},
                    },
                )
                if rng.random() < 0.85:
                    known = True
                    add(
                        t + rng.choice(identify_delay),
                        {"type": "identify", "contact_id": contact, "anonymous_id": anon},
                    )
            elif roll < 0.8 and known:
                campaign = f"cmp-{rng.randrange(5)}"
                add(
                    t,
                    {
                        "type": "email_sent",
                        **ids,
                        "properties": {"campaign_id": campaign},
                    },
                )
                if rng.random() < 0.5:
                    opened = t + rng.choice([0, 60, 900, 1800, 1801, 3000])
                    add(
                        opened,
                        {
                            "type": "email_open",
                            **ids,
                            "properties": {"campaign_id": campaign},
                        },
                    )
                    if rng.random() < 0.5:
                        add(
                            opened + 5,
                            {
                                "type": "email_click",
                                **ids,
                                "properties": {"campaign_id": campaign},
                            },
                        )
                if rng.random() < 0.05:
                    add(t + 7200, {"type": "email_unsubscribe", **ids})
            elif roll < 0.88:
                # The other product lines (events.custom) and the shop's orders: a trial
                # that a payment may convert within the plan's window, payments, app
                # installs (also by cookie), purchases and removals from carts.
                kind = rng.choice(list(PRODUCT_PROPS))
                add(t, {"type": kind, **browse, "properties": PRODUCT_PROPS[kind]})
                if kind == "trial_started" and rng.random() < 0.5:
                    paid = t + rng.choice([0, 600, 2700, 2701, 4000])
                    add(paid, {"type": "subscription_payment", **browse})
            elif known or rng.random() < 0.3:
                attrs: dict[str, Any] = {
                    "company_size": rng.choice([10, 150, 200, 900]),
                    "job_title": rng.choice(["CEO", "CTO", "Engineer", "VP Sales"]),
                    "country": rng.choice(["DE", "PL", None]),
                }
                add(
                    t,
                    {
                        "type": "profile_update",
                        **ids,
                        "properties": {"attributes": attrs},
                    },
                )
    if not cookie_after_identify:
        # No event under a cookie dated at or after its identify (a delayed cart
        # abandonment would be one): such events go to the contact id instead.
        identified = {
            raw["anonymous_id"]: (at, raw["contact_id"])
            for at, _, raw in timed
            if raw["type"] == "identify"
        }
        for at, _, raw in timed:
            anon = raw.get("anonymous_id")
            if raw["type"] != "identify" and anon in identified and at >= identified[anon][0]:
                del raw["anonymous_id"]
                raw["contact_id"] = identified[anon][1]
    timed.sort(key=lambda x: (x[0], x[1]))
    ordered = [raw for _, _, raw in timed]
    # Publish a few events late: after up to 40 newer events (of any topic).
    for _ in range(int(len(ordered) * late_share)):
        i = rng.randrange(len(ordered) - 1)
        j = min(len(ordered) - 1, i + rng.randrange(1, 40))
        ordered.insert(j, ordered.pop(i))
    return ordered


def _ids(as_contact: bool, contact: str, anon: str) -> dict[str, str]:
    return {"contact_id": contact} if as_contact else {"anonymous_id": anon}
