"""Collector sites: the sites file is validated at load, origins, the rate limiter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scorestream.collector.keys import (
    RateLimiter,
    Site,
    SitesError,
    load_sites,
    parse_sites,
    retry_after_seconds,
)
from scorestream.errors import UsageError

SHOP: dict[str, Any] = {
    "name": "shop",
    "write_key": "wk_shop_0123456789",
    "origins": ["https://www.shop.example", "http://localhost:8000"],
    "rate_limit": {"events_per_second": 5, "burst": 10},
    "consent_required": True,
    "email_field": "email",
}
GOOD: dict[str, Any] = {
    "sites": [
        SHOP,
        {"name": "blog", "write_key": "wk_blog_0123456789", "origins": ["https://blog.example"]},
    ]
}


def site(**over: Any) -> Site:
    return Site.model_validate({**SHOP, **over})


def test_a_valid_file_loads_into_sites_found_by_key(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(
        "sites:\n"
        "  - name: shop\n"
        "    write_key: wk_shop_0123456789\n"
        "    origins: [https://www.shop.example]\n"
        "    email_field: email\n",
        encoding="utf-8",
    )
    sites = load_sites(path)
    shop = sites.get("wk_shop_0123456789")
    assert shop is not None and shop.name == "shop"
    assert shop.email_field == "email"
    assert shop.consent_required is False
    assert shop.rate_limit.events_per_second == 20.0 and shop.rate_limit.burst == 200
    assert sites.get("nope") is None and sites.get(None) is None


def test_defaults_and_every_field_of_a_full_site() -> None:
    sites = parse_sites(GOOD, "sites.yaml")
    shop = sites.get("wk_shop_0123456789")
    assert shop is not None
    assert shop.origins == ("https://www.shop.example", "http://localhost:8000")
    assert shop.consent_required is True
    assert shop.rate_limit.burst == 10


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"write_key": "short"}, "site 'shop' (sites[0].write_key): String should match pattern"),
        ({"origins": ["https://a.example/path"]}, "site 'shop' (sites[0].origins): origins[0]"),
        ({"origins": ["*"]}, "no wildcard"),
        ({"origins": []}, "(sites[0].origins): Tuple should have at least 1 item"),
        ({"colour": "red"}, "site 'shop' (sites[0].colour): unknown field"),
        ({"rate_limit": {"events_per_second": 0}}, "(sites[0].rate_limit.events_per_second)"),
        ({"consent_required": "yes"}, "(sites[0].consent_required): Input should be a valid"),
    ],
)
def test_a_bad_field_names_file_site_and_field(change: dict[str, Any], expected: str) -> None:
    data = {"sites": [{**SHOP, **change}]}
    with pytest.raises(SitesError) as err:
        parse_sites(data, "conf/sites.yaml")
    assert "conf/sites.yaml: " in str(err.value)
    assert expected in str(err.value)
    assert isinstance(err.value, UsageError)  # the command exits 2


def test_a_missing_field_is_required() -> None:
    with pytest.raises(SitesError, match=r"site 'x' \(sites\[0\]\.write_key\): required"):
        parse_sites({"sites": [{"name": "x", "origins": ["https://x.example"]}]}, "s.yaml")


def test_duplicate_keys_and_names_are_refused() -> None:
    first = SHOP
    data = {"sites": [first, {**first, "origins": ["https://other.example"]}]}
    with pytest.raises(SitesError) as err:
        parse_sites(data, "s.yaml")
    assert "site 'shop' (sites[1].name): name used twice" in str(err.value)
    assert "(sites[1].write_key): the same write key as site 'shop'" in str(err.value)


@pytest.mark.parametrize("data", [None, [], {"sites": []}, {"site": []}])
def test_an_empty_or_misshapen_file_is_refused(data: Any) -> None:
    with pytest.raises(SitesError, match=r"s\.yaml: "):
        parse_sites(data, "s.yaml")


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(SitesError, match="cannot read the sites file"):
        load_sites(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [", encoding="utf-8")
    with pytest.raises(SitesError, match="not valid YAML"):
        load_sites(bad)


def test_origins_compare_as_browsers_send_them() -> None:
    s = site(origins=["https://WWW.Shop.example:443", "http://localhost:8000"])
    assert s.allows("https://www.shop.example")
    assert s.allows("http://localhost:8000")
    assert not s.allows("http://localhost:8001")
    assert not s.allows("https://evil.example")
    assert not s.allows("http://www.shop.example")  # another scheme is another origin


def test_the_limiter_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(secret=b"k" * 16)
    s = site(rate_limit={"events_per_second": 5, "burst": 10})
    assert limiter.take(s, "10.0.0.1", 10, now=100.0) == 0.0
    wait = limiter.take(s, "10.0.0.1", 1, now=100.0)
    assert wait == pytest.approx(0.2)
    assert retry_after_seconds(wait) == 1
    assert limiter.take(s, "10.0.0.1", 1, now=100.2) == 0.0  # one token refilled
    # another address, or the same address with another key, has its own bucket
    assert limiter.take(s, "10.0.0.2", 10, now=100.2) == 0.0
    other = site(write_key="wk_other_0123456789", rate_limit={"events_per_second": 5, "burst": 10})
    assert limiter.take(other, "10.0.0.1", 10, now=100.2) == 0.0


def test_a_batch_larger_than_the_burst_passes_once_the_bucket_is_full() -> None:
    limiter = RateLimiter()
    s = site(rate_limit={"events_per_second": 10, "burst": 5})
    assert limiter.take(s, "a", 50, now=0.0) == 0.0  # debt: 45 events
    # at 1 s: 5 - 50 + 10 = -35 tokens; one more needs 36 more: 3.6 s at 10/s
    assert limiter.take(s, "a", 1, now=1.0) == pytest.approx(3.6)
    assert limiter.take(s, "a", 1, now=4.6) == 0.0


def test_the_limiter_is_bounded_and_keeps_no_address() -> None:
    limiter = RateLimiter(max_entries=3)
    s = site()
    for i in range(10):
        limiter.take(s, f"192.0.2.{i}", 1, now=0.0)
    assert len(limiter) == 3
    assert not any(b"192.0.2" in slot for slot in limiter._buckets)
