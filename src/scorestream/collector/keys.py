"""Sites, their write keys and origins, and the rate limit per key and client address.

The sites file (``SCORESTREAM_COLLECTOR_SITES``) is validated whole at start-up into
frozen objects; every problem names the file, the site and the field, and the command
exits 2. Nothing here does I/O after loading, and time is passed in, so the limits are
unit-testable.

A write key is public by nature (it is in every page of the site): it only lets a client
*write* events of that site, from that site's origins, at that site's rate. No route of
the collector reads anything back with it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scorestream.errors import UsageError

#: a write key travels in a URL query: keep it URL-safe
KEY_PATTERN = r"^[A-Za-z0-9_-]{8,128}$"
_ORIGIN = re.compile(r"^(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class SitesError(UsageError):
    """The sites file cannot be used; the message names the file, site and field."""


class RateLimit(BaseModel):
    """Events per second per client address, with a burst allowance."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    events_per_second: Annotated[float, Field(gt=0)] = 20.0
    burst: Annotated[int, Field(ge=1)] = 200


class Site(BaseModel):
    """One website that may send events through the collector."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=100)]
    write_key: Annotated[str, Field(pattern=KEY_PATTERN)]
    origins: Annotated[tuple[str, ...], Field(min_length=1)]
    rate_limit: RateLimit = RateLimit()
    consent_required: bool = False
    email_field: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @field_validator("origins", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        # YAML gives a list; strict mode would refuse it for a tuple.
        return tuple(value) if isinstance(value, list) else value

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, origin in enumerate(value):
            if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"origins[{i}]: {origin!r} is not an origin such as https://www.example.com "
                    "(scheme, host and optional port; no path, no wildcard)"
                )
            out.append(normalize_origin(origin))
        return tuple(out)

    def allows(self, origin: str) -> bool:
        """Whether a browser on ``origin`` may send this site's events."""
        return normalize_origin(origin) in self.origins


def normalize_origin(origin: str) -> str:
    """Lower-case scheme and host; the default port left out (as browsers send it)."""
    origin = origin.strip().lower()
    scheme = origin.split("://", 1)[0]
    default = _DEFAULT_PORTS.get(scheme)
    if default and origin.endswith(default):
        origin = origin[: -len(default)]
    return origin


class _SitesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    sites: list[Site] = Field(min_length=1)


@dataclass(frozen=True)
class Sites:
    """The loaded sites, found by write key."""

    by_key: dict[str, Site]

    @classmethod
    def of(cls, sites: list[Site]) -> Sites:
        """Index sites by key (keys must be unique; :func:`load_sites` checks it)."""
        return cls({site.write_key: site for site in sites})

    def get(self, key: str | None) -> Site | None:
        """The site of a write key, or None."""
        return self.by_key.get(key) if key else None

    def any_allows(self, origin: str) -> bool:
        """Whether some site allows ``origin`` (preflights that carry no key)."""
        return any(site.allows(origin) for site in self.by_key.values())


def load_sites(path: str | Path) -> Sites:
    """Read and validate a sites file; raise :class:`SitesError` naming every problem."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SitesError(f"{file}: cannot read the sites file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SitesError(f"{file}: not valid YAML: {exc}") from None
    return parse_sites(data, str(file))


def parse_sites(data: Any, source: str) -> Sites:
    """Validate the parsed content of a sites file (``source`` names it in errors)."""
    try:
        parsed = _SitesFile.model_validate(data)
    except ValidationError as exc:
        raise SitesError(_describe(exc, data, source)) from None
    problems = []
    seen_keys: dict[str, str] = {}
    seen_names: set[str] = set()
    for i, site in enumerate(parsed.sites):
        if site.name in seen_names:
            problems.append(f"{source}: site {site.name!r} (sites[{i}].name): name used twice")
        seen_names.add(site.name)
        other = seen_keys.get(site.write_key)
        if other is not None:
            problems.append(
                f"{source}: site {site.name!r} (sites[{i}].write_key): "
                f"the same write key as site {other!r}"
            )
        seen_keys[site.write_key] = site.name
    if problems:
        raise SitesError("invalid sites file:\n" + "\n".join(problems))
    return Sites.of(list(parsed.sites))


def _describe(exc: ValidationError, data: Any, source: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        site = ""
        if len(loc) >= 2 and loc[0] == "sites" and isinstance(loc[1], int):
            try:
                name = data["sites"][loc[1]].get("name")
            except (AttributeError, IndexError, KeyError, TypeError):
                name = None
            site = f"site {name!r} " if isinstance(name, str) else f"site #{loc[1] + 1} "
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required"
        lines.append(f"{source}: {site}({where or 'top level'}): {msg}")
    return "invalid sites file:\n" + "\n".join(lines)


class RateLimiter:
    """Token buckets per (write key, client address): ``rate`` events/s, ``burst`` at once.

    Client addresses are kept only as keyed hashes (a secret drawn per process), so the
    limiter never holds an address itself. At most ``max_entries`` buckets are kept; the
    least recently used goes first (a full bucket is the same as no bucket, so dropping
    an idle one loses nothing).
    """

    def __init__(self, max_entries: int = 100_000, secret: bytes | None = None) -> None:
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._max = max_entries
        self._secret = secret if secret is not None else os.urandom(16)

    def _slot(self, key: str, address: str) -> bytes:
        msg = f"{key}\x00{address}".encode()
        return hmac.new(self._secret, msg, hashlib.blake2s).digest()[:16]

    def take(self, site: Site, address: str, count: int, now: float) -> float:
        """Take ``count`` events; return 0.0 if allowed, else the seconds to wait.

        A request larger than the burst is allowed once the bucket is full (it then
        runs into debt), so a maximal batch is never refused forever.
        """
        limit = site.rate_limit
        slot = self._slot(site.write_key, address)
        tokens, stamp = self._buckets.pop(slot, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - stamp) * limit.events_per_second)
        need = min(float(count), float(limit.burst))
        if tokens >= need:
            tokens -= count
            wait = 0.0
        else:
            wait = (need - tokens) / limit.events_per_second
        self._buckets[slot] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_seconds(wait: float) -> int:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, math.ceil(wait))
