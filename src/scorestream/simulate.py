"""``scorestream simulate``: realistic synthetic traffic for the event topics.

Traffic
-------
People start as anonymous visitors (a tracker cookie), read the blog, look at pricing,
download e-books and sign up for webinars; submitting a form identifies them and brings
a profile (job title, company size, industry, country). Marketing sends them e-mails,
some of which they open. They put products in carts and start checkouts, and low-intent
people often abandon the checkout. A few are keen buyers who end up on the contact form;
some unsubscribe. Around the website run the company's other product lines, whose
systems publish custom events (``events.custom``): a streaming service's billing
(trials, monthly and yearly payments, film packages, failed payments, cancellations), a
brand app (downloads, coupons, scanned receipts, leaflet opt-outs, loyalty tiers), and
the shop's orders, removals from carts and bounced e-mails; profiles carry a phone
number, whether the e-mail address was verified, and a loyalty card and tier for some.
So every shipped plan in ``rules/`` finds events to score, and traffic covers every
input topic and every event type of the contract. Each person has a hidden *intent*
(0..1, Beta(1.2, 4)): keen people act more often and do more of the things that lead
to a sale. The same seed gives the same traffic; with ``--start`` event times are
simulated (deterministic files for ``scorestream score``), without it they are now.

Outcomes (``--outcomes FILE``)
------------------------------
Ground truth for ``scorestream calibrate``. At the end of a run every *identified*
contact (one that had an ``identify`` event; the CRM knows no one else) gets one line
``{"contact_id": ..., "outcome": ..., "occurred_at": ...}``. The outcome is *good*
(:data:`GOOD_OUTCOMES`: ``converted`` when the contact started a checkout, else ``won``)
or *bad* (``churned`` when the contact unsubscribed, else ``lost``), with

    P(good) = baseline + sum(PLANTED_EFFECTS[s] for each signal s the contact showed)

where ``baseline`` is a hidden per-contact propensity, uniform in
:data:`BASELINE_RANGE` (mean :data:`BASELINE_GOOD_RATE`) and independent of everything
the contact did, and a signal counts once however often it was shown (table
:data:`SIGNALS`; the names are the rule ids of ``rules/b2b.yaml`` and
``rules/ecommerce.yaml``). The contact's events before its ``identify`` carry its
anonymous id; they count too. The intent drives behaviour only, not the outcome
directly: the planted effects are then the true effects of the behaviour, and a linear
regression of good outcomes on the six signals recovers them without bias. (A plain
"with vs. without" comparison does not: keen people show several signals at once.)
The sums stay inside [0, 1], so no clipping bends the model. The outcome happens
:data:`OUTCOME_DELAY_DAYS` (1 to 14) days after the contact's last event, to the second.

Speed
-----
Every event costs the same whatever the population (measured: the old generator drew a
person with weights over all people and scanned everyone for a campaign's audience, so
it made ~2,700 events/s with 10,000 people and ~200 with 100,000). People live in flat
arrays; a person is drawn by rejection sampling (weight ``0.2 + intent``), with intents
taken from a quantile table, block by block of people when first needed; campaign
audiences are kept as a list; lines are built from precomputed JSON fragments, with the
same text ``json.dumps`` would give; timestamps reuse the formatted second. Output goes
out in batches, and ``--rate`` paces batches rather than events (bench/simulate_bench.py
measures it).
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from itertools import islice
from types import MappingProxyType
from typing import IO, Any, Final

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
COMPANY_SIZES = [5, 20, 60, 150, 250, 800, 5000]
BLOG = ["/blog/lead-scoring-101", "/blog/kafka-for-marketers", "/blog/mql-vs-sql", "/blog/decay"]
PRICING = ["/pricing", "/pricing/team", "/pricing/enterprise"]
OTHER = ["/", "/about", "/careers", "/docs/getting-started"]
#: forms other than the contact form (which only keen people fill in)
FORMS = ["ebook-guide", "webinar-q4", "newsletter"]
CART_KINDS = ["cart_add", "product_review_view", "product_compare", "checkout_start"]
#: film packages of the streaming service (rules/streaming.yaml scores those with "film")
PACKAGES = ["film-classics", "family-films", "arthouse-films", "sports-live", "kids-club"]
PLATFORMS = ["ios", "android"]
LOYALTY_TIERS = ["member", "member", "silver", "gold"]
#: custom event types of the other product lines (events.custom)
CUSTOM_TYPES: tuple[str, ...] = (
    "subscription_payment",
    "package_purchased",
    "payment_failed",
    "subscription_cancelled",
    "trial_started",
    "app_download",
    "coupon_redeemed",
    "receipt_scanned",
    "leaflet_unsubscribe",
    "loyalty_tier_reached",
)
#: every event type the simulator emits
EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "form_submit",
    "identify",
    "profile_update",
    "email_sent",
    "email_open",
    "email_click",
    "email_unsubscribe",
    "email_bounce",
    *CART_KINDS,
    "cart_abandon",
    "cart_remove",
    "purchase",
    *CUSTOM_TYPES,
)

# --- the planted outcome model (see the module docstring) -----------------------------

#: Signal -> change of the probability of a good outcome when the contact showed it.
PLANTED_EFFECTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "pricing-visit": 0.15,
        "contact-form": 0.20,
        "webinar-signup": 0.10,
        "checkout-started": 0.12,
        "unsubscribed": -0.08,
        "cart-abandoned": -0.06,
    }
)
#: Signal -> the events that show it (matching the rules of the same id in rules/).
SIGNALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "pricing-visit": "page_view with properties.url starting with /pricing",
        "contact-form": "form_submit with properties.form_id contact",
        "webinar-signup": "form_submit with properties.form_id starting with webinar-",
        "checkout-started": "checkout_start",
        "unsubscribed": "email_unsubscribe",
        "cart-abandoned": "cart_abandon",
    }
)
#: The hidden per-contact baseline probability of a good outcome: uniform in this range.
BASELINE_RANGE: Final[tuple[float, float]] = (0.14, 0.26)
BASELINE_GOOD_RATE: Final[float] = (BASELINE_RANGE[0] + BASELINE_RANGE[1]) / 2
GOOD_OUTCOMES: Final[tuple[str, ...]] = ("won", "converted")
BAD_OUTCOMES: Final[tuple[str, ...]] = ("lost", "churned")
#: An outcome happens this many days (uniform, whole seconds) after the last event.
OUTCOME_DELAY_DAYS: Final[tuple[int, int]] = (1, 14)

_BIT: dict[str, int] = {name: 1 << k for k, name in enumerate(PLANTED_EFFECTS)}
_PRICING, _CONTACT, _WEBINAR, _CHECKOUT, _UNSUB, _ABANDON = _BIT.values()
#: P(good) - baseline for every combination of signal bits
_EFFECT_OF_BITS: tuple[float, ...] = tuple(
    sum(effect for name, effect in PLANTED_EFFECTS.items() if bits & _BIT[name])
    for bits in range(1 << len(_BIT))
)


def planted_signal(event: Mapping[str, Any]) -> str | None:
    """The planted signal (a key of :data:`PLANTED_EFFECTS`) an event shows, if any."""
    kind = event.get("type")
    props = event.get("properties") or {}
    if kind == "page_view":
        return "pricing-visit" if str(props.get("url", "")).startswith("/pricing") else None
    if kind == "form_submit":
        form = str(props.get("form_id", ""))
        if form == "contact":
            return "contact-form"
        return "webinar-signup" if form.startswith("webinar-") else None
    return {
        "checkout_start": "checkout-started",
        "email_unsubscribe": "unsubscribed",
        "cart_abandon": "cart-abandoned",
    }.get(str(kind))


def expected_good_rate(signals: Iterable[str]) -> float:
    """P(good outcome) averaged over the hidden baseline, for a contact's set of signals."""
    return BASELINE_GOOD_RATE + sum(PLANTED_EFFECTS[s] for s in set(signals))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What finally happened to an identified contact."""

    contact_id: str
    outcome: str
    occurred_at_us: int

    def to_json(self) -> str:
        """One JSONL line (without the newline), ``occurred_at`` formatted as events are."""
        return json.dumps(
            {
                "contact_id": self.contact_id,
                "outcome": self.outcome,
                "occurred_at": format_ts(self.occurred_at_us),
            },
            separators=(",", ":"),
        )


# --- traffic ---------------------------------------------------------------------------

#: Quantile levels of the intent distribution (a power of two: drawn with getrandbits).
_INTENT_BITS = 12
#: People get their intents in blocks of this many, each block from its own generator.
_BLOCK_BITS = 12
_BETA_A = 1.2  # and b = 4, which gives the CDF a closed form


@cache
def _intent_quantiles() -> tuple[float, ...]:
    """Mid-quantiles of Beta(1.2, 4), 4096 of them: an intent is one of them, at random.

    ``betavariate`` costs ~2 us; with a million people, most candidates of a pick are
    new, and it alone would cost more than the rest of an event. The CDF has a closed
    form for b = 4 (a polynomial in x^0.2), so a fine grid plus linear interpolation
    gives the quantiles.
    """
    a = _BETA_A

    def antiderivative(x: float) -> float:
        # x^(a-1) (1-x)^3 = x^(a-1) - 3 x^a + 3 x^(a+1) - x^(a+2)
        value: float = (
            x**a / a
            - 3 * x ** (a + 1) / (a + 1)
            + 3 * x ** (a + 2) / (a + 2)
            - x ** (a + 3) / (a + 3)
        )
        return value

    steps = 1 << 15
    xs = [k / steps for k in range(steps + 1)]
    total = antiderivative(1.0)
    cdf = [antiderivative(x) / total for x in xs]
    levels = 1 << _INTENT_BITS
    out = []
    for k in range(levels):
        q = (k + 0.5) / levels
        j = bisect.bisect_left(cdf, q)
        lo, hi = cdf[j - 1], cdf[j]
        out.append(xs[j - 1] + (q - lo) / (hi - lo) * (xs[j] - xs[j - 1]))
    return tuple(out)


def _page_props(url: str, title: bool = True) -> str:
    props: dict[str, str] = {"url": url, "title": "page"} if title else {"url": url}
    return _props(props)


def _props(props: dict[str, Any]) -> str:
    """The ``,"properties":{...}`` fragment of an event line, as json.dumps writes it."""
    return ',"properties":' + json.dumps(props, separators=(",", ":"))


_PAGE = {url: _page_props(url) for url in (*BLOG, *PRICING, *OTHER)}
_PAGE_PLAIN = [_page_props(url, title=False) for url in OTHER]
_FORM_HEAD = {form: f',"properties":{{"form_id":"{form}","fields":{{"email":"' for form in FORMS}
_FORM_HEAD["contact"] = ',"properties":{"form_id":"contact","fields":{"email":"'
_APP = [_props({"platform": platform}) for platform in PLATFORMS]


class Traffic:
    """An endless, seeded stream of events.

    :meth:`batch` gives ``(type, key, line)`` tuples (the fast path of the command);
    iterating gives event dictionaries (for tests and benchmarks). Both draw from the
    same stream. People's state changes only when their event is handed out, so a run
    that stops after N events has exactly the state of those N (the outcomes rely on it).
    """

    def __init__(self, people: int, seed: int, start_us: int | None, rate: float) -> None:
        if people < 1:
            raise ValueError("people must be >= 1")
        self.people = people
        self.seed = seed
        self.start_us = start_us
        self.step_us = int(US_PER_SECOND / rate) if rate > 0 else 1000
        self._rng = random.Random(seed)
        self._intent = array("d", [-1.0]) * people  # -1: not drawn yet
        self._known = bytearray(people)
        self._unsub = bytearray(people)
        self._signals = bytearray(people)  # bits of _BIT
        self._last = array("q", [0]) * people  # event time of the person's last event
        self._campaigns: dict[int, list[str]] = {}  # the person's last 5 campaigns
        # Known, subscribed people (a campaign's audience) and where each is in the list,
        # so that an unsubscribe removes in O(1).
        self._reach: list[int] = []
        self._reach_at: dict[int, int] = {}
        self._stream = self._events()

    def batch(self, n: int) -> list[tuple[str, str, str]]:
        """The next ``n`` events as ``(type, key, JSON line without newline)``."""
        return list(islice(self._stream, n))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, _, line in self._stream:
            yield json.loads(line)

    def intent(self, person: int) -> float:
        """The hidden intent of a person (``c-00042`` is person 42), 0..1, Beta(1.2, 4).

        A function of the seed and the person only: the same person is as keen in a
        short run as in a long one, whenever they first appear.
        """
        if self._intent[person] < 0.0:
            self._fill_intents(person >> _BLOCK_BITS)
        return self._intent[person]

    def _fill_intents(self, block: int) -> None:
        """Draw the intents of a block of people, from a generator of seed and block.

        Lazily, so a million people cost nothing up front (~0.4 ms per block of 4096
        when one of them is first a candidate); per block, so an intent does not depend
        on when its person first appears.
        """
        low = block << _BLOCK_BITS
        high = min(low + (1 << _BLOCK_BITS), self.people)
        bits = random.Random(f"scorestream-intent-{self.seed}-{block}").getrandbits
        quantiles = _intent_quantiles()
        self._intent[low:high] = array(
            "d", [quantiles[bits(_INTENT_BITS)] for _ in range(low, high)]
        )

    def outcomes(self) -> Iterator[Outcome]:
        """One outcome per identified contact, by contact index (see the module docstring).

        Deterministic for the seed and the events handed out so far; it draws from its
        own generator, so it never changes the traffic.
        """
        rng = random.Random(f"scorestream-outcomes-{self.seed}")
        low, high = BASELINE_RANGE
        delay_low, delay_high = (d * 86_400 for d in OUTCOME_DELAY_DAYS)
        for i, known in enumerate(self._known):
            if not known:
                continue
            bits = self._signals[i]
            good = rng.random() < rng.uniform(low, high) + _EFFECT_OF_BITS[bits]
            if good:
                name = "converted" if bits & _CHECKOUT else "won"
            else:
                name = "churned" if bits & _UNSUB else "lost"
            delay = rng.randint(delay_low, delay_high) * US_PER_SECOND
            yield Outcome(f"c-{i:05d}", name, self._last[i] + delay)

    def _profile(self) -> str:
        r = self._rng.random
        # About a third hold a loyalty card (rules/consumer_goods.yaml scores it and the
        # tier); the rest have neither attribute.
        loyalty = (
            f',"loyalty_card":"LC-{int(r() * 1_000_000):06d}",'
            f'"loyalty_tier":"{LOYALTY_TIERS[int(r() * len(LOYALTY_TIERS))]}"'
            if r() < 0.35
            else ""
        )
        # Some left a phone number; the mailing system knows whether the address was
        # verified (a JSON boolean: rules/three_models.yaml tests it).
        phone = f',"phone":"+49 30 {int(r() * 10_000_000):07d}"' if r() < 0.5 else ""
        verified = "true" if r() < 0.6 else "false"
        return (
            ',"properties":{"attributes":{'
            f'"job_title":"{TITLES[int(r() * len(TITLES))]}",'
            f'"company_size":{COMPANY_SIZES[int(r() * len(COMPANY_SIZES))]},'
            f'"industry":"{INDUSTRIES[int(r() * len(INDUSTRIES))]}",'
            f'"country":"{COUNTRIES[int(r() * len(COUNTRIES))]}"{phone},'
            f'"email_verified":{verified}{loyalty}}}}}'
        )

    def _product(self) -> str:
        """Properties of a product in a cart or an order: an id, a value, a currency."""
        r = self._rng.random
        value = (1000 + int(r() * 89_001)) / 100  # 10.00 .. 900.00, like round(x, 2)
        return (
            f',"properties":{{"product_id":"sku-{1 + int(r() * 50)}",'
            f'"value":{value!r},"currency":"EUR"}}'
        )

    def _sku(self) -> str:
        """Properties naming a product only (a removal from a cart)."""
        return f',"properties":{{"product_id":"sku-{1 + int(self._rng.random() * 50)}"}}'

    def _product_line(self, i: int, w: float, known: int) -> tuple[str, str]:
        """An event of the other product lines, or the shop's orders: ``(type, props)``.

        Keen people pay, buy and scan receipts more often (``w`` is their intent).
        Anonymous visitors only install the app or empty a cart.
        """
        r = self._rng.random
        if not known:
            if r() < 0.3:
                return "app_download", _APP[int(r() * len(_APP))]
            return "cart_remove", self._sku()
        roll = r()
        if roll < 0.3:  # the streaming service's billing
            if r() < 0.2 + w:
                if r() < 0.25 + w / 2:
                    plan, amount = "yearly", "99.0"
                else:
                    plan, amount = "monthly", "9.99"
                return (
                    "subscription_payment",
                    f',"properties":{{"plan":"{plan}","amount":{amount},"currency":"EUR"}}',
                )
            other = r()
            kind = (
                "trial_started"
                if other < 0.45
                else "payment_failed"
                if other < 0.85
                else "subscription_cancelled"
            )
            return kind, ',"properties":{"plan":"monthly"}'
        if roll < 0.4:
            package = PACKAGES[int(r() * len(PACKAGES))]
            return "package_purchased", f',"properties":{{"package_id":"{package}","amount":4.99}}'
        if roll < 0.48:
            return "app_download", _APP[int(r() * len(_APP))]
        if roll < 0.58:
            return "coupon_redeemed", f',"properties":{{"coupon_id":"cp-{1 + int(r() * 20)}"}}'
        if roll < 0.58 + 0.12 * (0.5 + w):
            total = (100 + int(r() * 14_901)) / 100  # 1.00 .. 150.00
            return "receipt_scanned", f',"properties":{{"basket":{{"total":{total!r}}}}}'
        if roll < 0.76:
            return "leaflet_unsubscribe", ""
        if roll < 0.8:
            tier = LOYALTY_TIERS[int(r() * len(LOYALTY_TIERS))]
            return "loyalty_tier_reached", f',"properties":{{"tier":"{tier}"}}'
        if roll < 0.8 + 0.14 * (0.5 + w):
            return "purchase", self._product()
        mine = self._campaigns.get(i)
        if mine and r() < 0.5:
            name = mine[-1]
            return (
                "email_bounce",
                f',"properties":{{"campaign_id":"{name}","message_id":"{name}-{i}"}}',
            )
        return "cart_remove", self._sku()

    def _events(self) -> Iterator[tuple[str, str, str]]:
        """The stream. The hot loop: everything it touches is a local variable."""
        rng = self._rng
        r, bits = rng.random, rng.getrandbits
        seed, n, start_us, step_us = self.seed, self.people, self.start_us, self.step_us
        intent, fill = self._intent, self._fill_intents
        envelope = 0.2 + _intent_quantiles()[-1]
        known, unsub, signals, last = self._known, self._unsub, self._signals, self._last
        campaigns, reach, reach_at = self._campaigns, self._reach, self._reach_at
        product = self._product
        clock = time.time_ns
        count = campaign = 0
        second, second_text = -1, ""

        def line(i: int, kind: str, props: str = "") -> tuple[str, str, str]:
            """The next event of person ``i``: counted, stamped, its time remembered."""
            nonlocal count, second, second_text
            count += 1
            us = clock() // 1000 if start_us is None else start_us + count * step_us
            last[i] = us
            # format_ts costs ~4 us; the formatted second is reused
            sec, fraction = divmod(us, US_PER_SECOND)
            if sec != second:
                second, second_text = sec, format_ts(sec * US_PER_SECOND)[:-1]
            ts = f"{second_text}.{fraction:06d}".rstrip("0") if fraction else second_text
            if known[i]:
                key = f"c-{i:05d}"
                field = "contact_id"
            else:
                key = f"anon-{seed}-{i:05d}"
                field = "anonymous_id"
            return (
                kind,
                key,
                f'{{"event_id":"sim-{count:09d}-{bits(32):08x}","type":"{kind}",'
                f'"{field}":"{key}","occurred_at":"{ts}Z"{props}}}',
            )

        while True:
            if r() < 0.01:
                campaign += 1
                name = f"cmp-{campaign:04d}"
                # A campaign reaches a sample of the known, subscribed people (at most 25),
                # so that e-mails are a share of the traffic, not most of it.
                for i in self._audience(25):
                    campaigns[i] = [*campaigns.get(i, ())[-4:], name]
                    yield line(
                        i,
                        "email_sent",
                        f',"properties":{{"campaign_id":"{name}","message_id":"{name}-{i}"}}',
                    )
                continue
            # A person, chosen with weight 0.2 + intent in O(1), by rejection sampling: a
            # uniform candidate is accepted with probability (0.2 + intent) / envelope,
            # the largest weight (~2.4 candidates per pick).
            while True:
                i = int(r() * n)
                w = intent[i]
                if w < 0.0:
                    fill(i >> _BLOCK_BITS)
                    w = intent[i]
                if r() * envelope < 0.2 + w:
                    break
            roll = r()
            if roll < 0.45:
                if r() < w:
                    url = PRICING[int(r() * len(PRICING))]
                    signals[i] |= _PRICING
                elif r() < 0.6:
                    url = BLOG[int(r() * len(BLOG))]
                else:
                    url = OTHER[int(r() * len(OTHER))]
                yield line(i, "page_view", _PAGE[url])
            elif roll < 0.55:
                if r() < w * 0.6:
                    form = "contact"
                    signals[i] |= _CONTACT
                else:
                    form = FORMS[int(r() * len(FORMS))]
                    if form.startswith("webinar-"):
                        signals[i] |= _WEBINAR
                yield line(i, "form_submit", f'{_FORM_HEAD[form]}c-{i:05d}@example.com"}}}}')
                if not known[i]:
                    known[i] = 1
                    reach_at[i] = len(reach)
                    reach.append(i)
                    kind, key, text = line(i, "identify")
                    yield kind, key, f'{text[:-1]},"anonymous_id":"anon-{seed}-{i:05d}"}}'
                    yield line(i, "profile_update", self._profile())
            elif roll < 0.75 and known[i] and i in campaigns:
                mine = campaigns[i]
                name = mine[int(r() * len(mine))]
                if r() < 0.5 + w / 2:
                    yield line(i, "email_open", f',"properties":{{"campaign_id":"{name}"}}')
                    if r() < w:
                        yield line(
                            i,
                            "email_click",
                            f',"properties":{{"campaign_id":"{name}","link_url":"/pricing"}}',
                        )
                elif not unsub[i] and r() < 0.05:
                    unsub[i] = 1
                    signals[i] |= _UNSUB
                    self._leave_reach(i)
                    # half leave the newsletter list, the rest only the campaign
                    listed = ',"list":"newsletter"' if r() < 0.5 else ""
                    yield line(
                        i,
                        "email_unsubscribe",
                        f',"properties":{{"campaign_id":"{name}"{listed}}}',
                    )
            elif roll < 0.85:
                kind = CART_KINDS[int(r() * len(CART_KINDS))]
                props = product()
                if kind == "checkout_start":
                    signals[i] |= _CHECKOUT
                yield line(i, kind, props)
                # Low-intent people abandon a started checkout more often.
                if kind == "checkout_start" and r() < 0.5 * (1.0 - w):
                    signals[i] |= _ABANDON
                    yield line(i, "cart_abandon", props)
            elif roll < 0.9 and known[i]:
                yield line(i, "profile_update", self._profile())
            elif roll >= 0.92:
                kind, props = self._product_line(i, w, known[i])
                yield line(i, kind, props)
            else:
                yield line(i, "page_view", _PAGE_PLAIN[int(r() * len(_PAGE_PLAIN))])

    def _audience(self, size: int) -> list[int]:
        """Up to ``size`` distinct known, subscribed people, uniformly chosen, in O(size)."""
        reach = self._reach
        if len(reach) <= size:
            return list(reach)
        r = self._rng.random
        chosen: dict[int, None] = {}  # ordered: the e-mails go out in the order drawn
        while len(chosen) < size:
            chosen[reach[int(r() * len(reach))]] = None
        return list(chosen)

    def _leave_reach(self, i: int) -> None:
        at = self._reach_at.pop(i)
        moved = self._reach.pop()
        if moved != i:
            self._reach[at] = moved
            self._reach_at[moved] = at


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
#: The invalid messages as text that encodes back to the same bytes (surrogateescape),
#: so a batch of lines is joined and encoded at once.
_BAD_TEXT = [m.decode("utf-8", "surrogateescape") for m in BAD_MESSAGES]

#: Events per batch when not paced: large enough that per-batch costs vanish.
FAST_BATCH = 2048
#: Paced batches go out this often (seconds): ``--rate 50000`` sends 500 every 10 ms.
PACE_INTERVAL = 0.01


#: How long ``simulate`` waits for the leaders of its topics before it publishes (s).
LEADER_WAIT = 30.0


def await_leaders(producer: Any, topics: list[str], timeout: float) -> list[str]:
    """Wait until every partition of ``topics`` has a leader in the producer's metadata;
    the topics that still have none after ``timeout`` seconds.

    Why: a producer that publishes right after its topics were created delivered its
    first records only after about 0.5 s here (its metadata and leader lookups; 0.005 -
    0.02 s once the leaders are known), and a traced ``tests/soak.py`` run on freshly
    created topics had the first second of e-mail events applied a second before the
    identifies and profile updates produced before them: events that reach Kafka late
    are applied late (docs/rules.md), and 11 of 4,220 crossings differed from ``score``.
    Traffic that a worker reads as it is published should reach Kafka in the order it
    was generated, as far as a producer can keep it (partitions still go out a few ms
    apart).
    """
    deadline = time.monotonic() + timeout
    missing = list(topics)
    while True:
        still = []
        for topic in missing:
            try:
                meta = producer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
                found = meta.topics.get(topic)
                ready = (
                    found is not None
                    and found.error is None
                    and bool(found.partitions)
                    and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
                )
            except Exception:  # the broker is not answering (yet): look again
                ready = False
            if not ready:
                still.append(topic)
        missing = still
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.1)


def simulate_command(args: argparse.Namespace) -> int:
    """Publish (or write) simulated traffic, and with ``--outcomes`` the outcomes."""
    if args.contacts < 1:
        raise UsageError("--contacts: must be >= 1")
    if not 0.0 <= args.bad_ratio < 1.0:
        raise UsageError("--bad-ratio: must be in [0, 1)")
    if args.rate < 0:
        raise UsageError("--rate: must be >= 0")
    settings = Settings.load(config_file=args.config)
    start = parse_ts(args.start) if getattr(args, "start", None) else None
    outcomes_path: str | None = getattr(args, "outcomes", None)
    traffic = Traffic(args.contacts, args.seed, start, args.rate)
    with ExitStack() as files:
        try:
            out: IO[bytes] | None = None
            if args.out:
                out = files.enter_context(open(args.out, "wb"))
            elif args.dry_run:
                out = sys.stdout.buffer
            outcomes_out = None
            if outcomes_path:
                # Opened now: a path that cannot be written fails before any traffic.
                outcomes_out = files.enter_context(open(outcomes_path, "w", encoding="utf-8"))
        except OSError as exc:
            print(f"scorestream: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        producer = None
        if not args.dry_run:
            from confluent_kafka import Producer  # noqa: PLC0415 (--dry-run needs no Kafka)

            producer = Producer(clients.event_producer(settings))
        topics = {kind: settings.topic(topic_for(kind)) for kind in EVENT_TYPES}
        if producer is not None:
            missing = await_leaders(producer, sorted(set(topics.values())), LEADER_WAIT)
            if missing:
                # Nothing could be delivered to them: say so now, not after a flush.
                print(
                    f"scorestream: no leader for {', '.join(missing)} after "
                    f"{LEADER_WAIT:.0f} s: is Kafka at {settings.bootstrap} up, and were "
                    "the topics created (`scorestream topics apply`)?",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
        try:
            sent, bad = _run(args, traffic, start is None, out, producer, topics)
        finally:
            if out is not None:
                out.flush()
        if outcomes_out is not None:
            for outcome in traffic.outcomes():
                outcomes_out.write(outcome.to_json() + "\n")
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


def _run(
    args: argparse.Namespace,
    traffic: Traffic,
    wall_clock: bool,
    out: IO[bytes] | None,
    producer: Any,
    topics: dict[str, str],
) -> tuple[int, int]:
    """Send batches until ``--events``, ``--duration`` or Ctrl-C; (events, invalid) sent.

    With ``--rate`` and wall-clock times, batches of ``rate * PACE_INTERVAL`` events are
    paced (one sleep per batch, not per event: a sleep costs more than an event, and
    sleeps shorter than ~0.1 ms are not kept precisely).
    """
    paced = args.rate > 0 and wall_clock
    size = max(1, min(FAST_BATCH, int(args.rate * PACE_INTERVAL))) if paced else FAST_BATCH
    bad_rng = random.Random(args.seed + 1)
    sent = bad = 0
    began = time.monotonic()
    try:
        while True:
            n = size
            if args.events:
                n = min(n, args.events - sent)
                if n <= 0:
                    break
            if args.duration and time.monotonic() - began >= args.duration:
                break
            events = traffic.batch(n)
            # After which events of the batch an invalid message follows, and which one.
            invalid: list[tuple[int, int]] = []
            if args.bad_ratio:
                ratio, draw = args.bad_ratio, bad_rng.random
                invalid = [
                    (pos, int(draw() * len(BAD_MESSAGES)))
                    for pos in range(len(events))
                    if draw() < ratio
                ]
            if out is not None:
                out.write(_text(events, invalid).encode("utf-8", "surrogateescape"))
            if producer is not None:
                _produce_batch(producer, topics, events, invalid)
            sent += len(events)
            bad += len(invalid)
            if paced:
                delay = began + sent / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    except KeyboardInterrupt:
        pass
    return sent, bad


def _text(events: list[tuple[str, str, str]], invalid: list[tuple[int, int]]) -> str:
    """The batch as JSONL text, each invalid message on a line after its event."""
    lines = [line for _, _, line in events]
    for pos, which in reversed(invalid):  # from the end: earlier positions stay valid
        lines.insert(pos + 1, _BAD_TEXT[which])
    lines.append("")
    return "\n".join(lines)


def _produce_batch(
    producer: Any,
    topics: dict[str, str],
    events: list[tuple[str, str, str]],
    invalid: list[tuple[int, int]],
) -> None:
    """Produce a batch keyed as the contract says.

    An invalid message goes right after its event, without a key, to the same topic.
    """
    produce = producer.produce
    done = 0
    for pos, which in [*invalid, (len(events) - 1, -1)]:
        for kind, key, line in events[done : pos + 1]:
            try:
                produce(topics[kind], line, key)
            except BufferError:  # librdkafka's queue is full: wait for deliveries
                _produce(producer, topics[kind], key.encode(), line.encode())
        done = pos + 1
        if which >= 0:
            _produce(producer, topics[events[pos][0]], None, BAD_MESSAGES[which])
    producer.poll(0)


def _produce(producer: Any, topic: str, key: bytes | None, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.1)
