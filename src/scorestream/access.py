"""Who may read: the API token and the rule about bind addresses.

One token (``SCORESTREAM_API_TOKEN``) guards the worker's ``/contacts`` and ``/status``
and the lead board; ``/healthz`` and ``/metrics`` stay open for orchestrators and
Prometheus (they carry no contact data). Without a token, the worker and the board
refuse to listen beyond loopback unless ``SCORESTREAM_ALLOW_INSECURE_BIND`` says so:
an open API on a network address would hand every contact's attributes to anyone who
can reach the port.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket

from scorestream.errors import UsageError
from scorestream.settings import Settings

#: the header value prefix of RFC 6750 bearer tokens (the scheme is case-insensitive)
BEARER = "bearer "
#: what a 401 answer says about how to authenticate
CHALLENGE = 'Bearer realm="scorestream"'


def bearer_ok(authorization: str | None, token: str) -> bool:
    """True when no token is configured, or the header carries exactly that token.

    Compared with :func:`hmac.compare_digest`, so the time taken does not tell how much
    of a guess was right.
    """
    if not token:
        return True
    if not authorization or authorization[: len(BEARER)].lower() != BEARER:
        return False
    given = authorization[len(BEARER) :].strip()
    return hmac.compare_digest(given.encode(), token.encode())


def session_value(token: str) -> str:
    """The board's session cookie value for ``token``.

    A browser cannot add an ``Authorization`` header to a page load or an EventSource,
    so the board's login form exchanges the token for this cookie. It is a keyed hash of
    the token, not the token itself: a leaked cookie cannot be used as an API token.
    """
    return hmac.new(token.encode(), b"scorestream-board-session", hashlib.sha256).hexdigest()


def cookie_ok(value: str | None, token: str) -> bool:
    """True when no token is configured, or ``value`` is the session cookie for it."""
    if not token:
        return True
    if not value:
        return False
    return hmac.compare_digest(value.encode(), session_value(token).encode())


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address.

    ``0.0.0.0``, ``::`` and the empty string mean every interface, so they are not.
    A host name counts only if all its addresses are loopback ones.
    """
    name = host.strip().strip("[]")
    if not name:
        return False
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False  # cannot tell: treat as exposed
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


def check_bind(host: str, settings: Settings, what: str) -> None:
    """Refuse (exit code 2) to serve ``what`` on ``host`` beyond loopback without a token."""
    if settings.api_token or settings.allow_insecure_bind or is_loopback(host):
        return
    raise UsageError(
        f"{what}: refusing to listen on {host!r} (beyond loopback) without "
        "SCORESTREAM_API_TOKEN; set a token, bind to 127.0.0.1, or set "
        "SCORESTREAM_ALLOW_INSECURE_BIND=true if something in front checks access"
    )
