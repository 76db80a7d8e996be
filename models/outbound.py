"""Outbound HTTP: which hosts this server may reach for a user, and the one HTTP client that reaches them.

Every request made on a user's behalf (remote agents, URL ingestion) goes through
`OutboundPolicy.fetch`; each use builds its own policy with its own default (agents: `loopback,private`,
URL ingestion: `public`, i.e. every global address and nothing inward). A URL is parsed once (by httpx2, the parser that also builds the request),
its host is resolved with getaddrinfo, and EVERY resolved address is checked (IPv4-mapped IPv6 is
unwrapped first, so `::ffff:127.0.0.1` is loopback, and `2130706433`, `0x7f.1`, `0177.0.0.1` and
`127.1` are whatever getaddrinfo makes of them: loopback). The connection then goes to a checked
address only (the name is never resolved again, so DNS rebinding cannot move it), while the Host
header and TLS SNI keep the name. Redirects are followed hop by hop, each hop checked again; a
refused hop is reported and nothing is sent to it. One deadline covers the whole exchange, and
the body is capped after decompression.

    SessionError
    └── UrlNotAllowed        url_not_allowed: the policy refused the URL or a redirect hop
    OutboundFailure          the request was allowed but did not work out; `kind` says how:
                             unreachable | timeout | too_large | bad_response | redirects

`OutboundFailure` is not a tool error: callers translate it into their own (remote_agent_...).
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2

from session_mcp.models.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the addresses it resolves to, as strings; raises OSError when it cannot."""
RESOLVE_TIMEOUT_S = 10.0
"""How long a host name may take to resolve when no request deadline applies (a URL checked alone)."""
FailureKind = Literal["unreachable", "timeout", "too_large", "bad_response", "redirects"]

DEFAULT_ALLOW = "loopback,private"
URL_DEFAULT_ALLOW = "public"
"""URL ingestion's default: the public internet, and no loopback, private or other non-global address."""
MAX_URL_CHARS = 2048
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}

_NAMED: dict[str, tuple[IPNetwork, ...]] = {
    "loopback": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
    "private": (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fc00::/7"),
    ),
    "shared": (ipaddress.ip_network("100.64.0.0/10"),),
}
_PUBLIC = frozenset({"public", "global"})  # every globally routable address (ipaddress's is_global)
# Instance metadata services: they hand out cloud credentials, so no allow entry opens them.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6 (inside fc00::/7, so "private" would let it through)
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})
_CALLER_FORBIDDEN = frozenset({"authorization", "proxy-authorization", "cookie"}) | _FORBIDDEN_HEADERS


class OutboundFailure(Exception):
    """An allowed request that failed; `detail` says what happened, for the caller's own message."""

    def __init__(self, kind: FailureKind, url: str, detail: str) -> None:
        super().__init__(f"{kind}: {url}: {detail}")
        self.kind: FailureKind = kind
        self.url = url
        self.detail = detail


# -- configuration ------------------------------------------------------------------------------


def _host_and_port(text: str, what: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (a bare IPv6 address has no port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{what} {text!r}: write an IPv6 address as [addr] or [addr]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{what} {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    return host.lower(), port


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: networks (a keyword, a CIDR or an address) or a host name, maybe with a port."""

    text: str
    networks: tuple[IPNetwork, ...] = ()
    host: str | None = None
    suffix: bool = False
    port: int | None = None
    public: bool = False

    def allows(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.public:
            return address.is_global
        if self.host is not None:
            name = host.rstrip(".")
            return name.endswith("." + self.host) if self.suffix else name == self.host
        return any(address in network for network in self.networks)


def parse_allow(text: str) -> tuple[AllowEntry, ...]:
    """Parse a comma-separated allow list: `public` (alias `global`: every globally routable address),
    `loopback`, `private`, `shared` (100.64.0.0/10), a CIDR
    (`10.1.0.0/16`), an address (`203.0.113.7`, `[2001:db8::1]`), a host name (`agents.example.com`)
    or every subdomain (`*.example.com`), each optionally with `:port`. Raises ValueError."""
    entries: list[AllowEntry] = []
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        if item.lower() in _PUBLIC:
            entries.append(AllowEntry(item, public=True))
            continue
        if item.lower() in _NAMED:
            entries.append(AllowEntry(item, networks=_NAMED[item.lower()]))
            continue
        if "/" in item:
            try:
                network = ipaddress.ip_network(item.strip("[]"), strict=False)
            except ValueError as exc:
                raise ValueError(f"allow entry {item!r} is not a valid CIDR network: {exc}") from exc
            entries.append(AllowEntry(item, networks=(network,)))
            continue
        try:  # a bare IPv6 address contains colons that are not a port
            entries.append(AllowEntry(item, networks=(ipaddress.ip_network(item),)))
            continue
        except ValueError:
            pass
        host, port = _host_and_port(item, "allow entry")
        try:
            entries.append(AllowEntry(item, networks=(ipaddress.ip_network(host),), port=port))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(
                f"allow entry {item!r} is not a keyword (public, loopback, private, shared), a network, "
                "an address or a host name"
            )
        suffix = host.startswith("*.")
        entries.append(
            AllowEntry(item, host=host[2:] if suffix else host.rstrip("."), suffix=suffix, port=port)
        )
    return tuple(entries)


@dataclass(frozen=True)
class HeaderRule:
    """A header sent to one host (and port, if given): how an agent's credentials are configured."""

    host: str
    port: int | None
    name: str
    value: str = field(repr=False)

    def applies(self, host: str, port: int) -> bool:
        return host.rstrip(".") == self.host and (self.port is None or self.port == port)


def parse_headers(text: str) -> tuple[HeaderRule, ...]:
    """Parse `host[:port]=Header-Name: value` entries separated by commas or newlines. Raises ValueError
    (without echoing values, which are secrets)."""
    rules: list[HeaderRule] = []
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        target, sep, header = item.partition("=")
        name, colon, value = header.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not colon or not target.strip():
            raise ValueError(
                f"agent header entry for {target.strip()!r} must read host[:port]=Header-Name: value"
            )
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"agent header entry for {target.strip()!r}: {name!r} cannot be set")
        if any(c in value for c in "\r\n\x00"):
            raise ValueError(f"agent header entry for {target.strip()!r}: the value has a line break")
        host, port = _host_and_port(target.strip(), "agent header host")
        rules.append(HeaderRule(host.rstrip("."), port, name, value))
    return tuple(rules)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# -- the address check --------------------------------------------------------------------------


def _effective(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id (fe80::1%eth0) names no other host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _never(ip: IPAddress) -> str | None:
    """Why no allow entry can open this address, or None."""
    if ip in _METADATA_ADDRESSES:
        kind = "a link-local" if ip.is_link_local else "a private" if ip.is_private else "an"
        return f"{kind} address of a cloud metadata service"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "an unspecified address (it reaches this machine)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip == _BROADCAST:
        return "the broadcast address"
    if ip.is_reserved and not ip.is_loopback:  # ::1 sits inside the reserved ::/8
        return "a reserved address"
    return None


def describe(ip: IPAddress) -> str:
    never = _never(ip)
    if never is not None:
        return never
    if ip.is_loopback:
        return "a loopback address"
    if any(ip in n for n in _NAMED["private"]):
        return "a private address"
    if any(ip in n for n in _NAMED["shared"]):
        return "a shared (carrier-grade NAT) address"
    if not ip.is_global:
        return "a special-purpose address"
    return "a public address"


def redact(url: str) -> str:
    """A URL safe to show: no user:password part."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@", r"\1", url)


@dataclass(frozen=True)
class Target:
    """A checked URL: where it may connect (every address of `host` passed the policy)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    redirects: tuple[str, ...]
    elapsed_ms: int

    def text(self) -> str:
        charset = re.search(r"charset=\"?([\w.:-]+)", self.headers.get("content-type", ""))
        try:
            return self.body.decode(charset.group(1) if charset else "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return jsonlib.loads(self.body)


class OutboundPolicy:
    """The address policy plus the HTTP client. Immutable and thread-safe; build one per process."""

    def __init__(
        self,
        allow: str | Iterable[AllowEntry] = DEFAULT_ALLOW,
        *,
        headers: str | Iterable[HeaderRule] = (),
        resolver: Resolver = system_resolver,
        setting: str = "the server's allow list",
        user_agent: str = "session-mcp",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow = parse_allow(allow) if isinstance(allow, str) else tuple(allow)
        self.headers = parse_headers(headers) if isinstance(headers, str) else tuple(headers)
        self.resolver = resolver
        self.setting = setting
        self.user_agent = user_agent
        self._ssl = ssl_context  # None: the system's trust store, built on first use
        self._ssl_lock = threading.Lock()

    # -- checking ---------------------------------------------------------------------------------

    def check(self, url: str, deadline: float | None = None) -> Target:
        """Parse and resolve `url` and check every address; raises UrlNotAllowed, or OutboundFailure
        (unreachable) when the name does not resolve, or (timeout) when resolving it runs past
        `deadline` (time.monotonic; default RESOLVE_TIMEOUT_S from now). Connects to nothing."""
        shown = redact(url)[:200]
        if len(url) > MAX_URL_CHARS:
            raise UrlNotAllowed(f"the URL is {len(url)} characters, over the limit of {MAX_URL_CHARS}")
        if any(c in url for c in "\\\x00\r\n\t ") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise UrlNotAllowed(
                f"{shown!r} contains a backslash, a space or a control character; write a plain URL"
            )
        try:
            parsed = httpx2.URL(url)
        except (httpx2.InvalidURL, TypeError, ValueError) as exc:
            raise UrlNotAllowed(
                f"{shown!r} is not a valid URL ({exc}); write it as http://host:port/path"
            ) from exc
        if parsed.scheme not in ("http", "https"):
            raise UrlNotAllowed(
                f"{shown} uses the {parsed.scheme or 'empty'}: scheme; only http:// and https:// are allowed"
            )
        if parsed.userinfo:
            raise UrlNotAllowed(
                f"{shown} carries a user name or password; remove it (credentials for an agent "
                "belong in the server's agent header settings, never in the URL)"
            )
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise UrlNotAllowed(f"{shown} has no host; write it as http://host:port/path")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if host.rstrip(".") in _METADATA_NAMES:
            raise UrlNotAllowed(f"{shown} names a cloud metadata service; such hosts are never allowed")
        addresses = self._resolve(host, port, shown, deadline)
        for address in addresses:
            self._check_address(host, address, port, shown)
        if parsed.scheme == "http" and any(r.applies(host, port) for r in self.headers):
            public = [a for a in addresses if describe(a) == "a public address"]
            if public:
                raise UrlNotAllowed(
                    f"{shown} would carry the credentials configured for {host} in plain text to "
                    f"the public address {public[0]}; use https://"
                )
        return Target(str(parsed), parsed.scheme, host, port, addresses)

    def _resolve(self, host: str, port: int, shown: str, deadline: float | None) -> tuple[IPAddress, ...]:
        literal = host.split("%", 1)[0]
        try:
            return (_effective(literal),)
        except ValueError:
            pass
        try:
            found = self._lookup(host, port, shown, deadline)
        except (OSError, UnicodeError) as exc:
            raise OutboundFailure(
                "unreachable", shown, f"the host name {host} does not resolve ({exc})"
            ) from exc
        if not found:
            raise OutboundFailure("unreachable", shown, f"the host name {host} resolves to no address")
        try:
            return tuple(dict.fromkeys(_effective(a) for a in found))
        except ValueError as exc:
            raise OutboundFailure("unreachable", shown, f"the resolver gave a bad address ({exc})") from exc

    def _lookup(self, host: str, port: int, shown: str, deadline: float | None) -> list[str]:
        """The resolver's answer, waited for until `deadline` at most. getaddrinfo takes no timeout
        (glibc retries each name server for 5 s, twice), so it runs on a thread of its own, left
        to finish in the background if the time runs out."""
        budget = RESOLVE_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        if budget <= 0:
            raise OutboundFailure("timeout", shown, f"the time ran out before {host} was resolved")
        answer: list[list[str] | BaseException] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                answer.append(list(self.resolver(host, port)))
            except BaseException as exc:  # handed to the waiting thread, which raises it
                answer.append(exc)
            finally:
                done.set()

        threading.Thread(target=lookup, name="session-mcp-resolve", daemon=True).start()
        if not done.wait(budget):
            raise OutboundFailure(
                "timeout", shown, f"the host name {host} did not resolve within {budget:.3g} s"
            )
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    def _check_address(self, host: str, address: IPAddress, port: int, shown: str) -> None:
        where = f"{shown} resolves to {address}"
        never = _never(address)
        if never is not None:
            raise UrlNotAllowed(
                f"{where}, {never}; such addresses are never allowed, whatever {self.setting} says"
            )
        if any(entry.allows(host, address, port) for entry in self.allow):
            return
        raise UrlNotAllowed(
            f"{where}, {describe(address)} not in {self.setting}; use an allowed host, or ask the "
            f"server's operator to add {host if host != str(address) else address} to {self.setting}"
        )

    # -- fetching ---------------------------------------------------------------------------------

    def fetch(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
        max_bytes: int,
        follow_redirects: bool = True,
    ) -> OutboundResponse:
        """Send one request, following up to 5 redirects (each hop checked), within `timeout` seconds
        in total, reading at most `max_bytes` of (decompressed) body. `headers` may not carry
        credentials: the only credentials sent are the ones configured for the host of each hop."""
        for name, value in (headers or {}).items():
            if name.lower() in _CALLER_FORBIDDEN or any(c in name + value for c in "\r\n\x00"):
                raise ValueError(f"header {name!r} may not be passed to fetch")
        started = time.monotonic()
        deadline = started + timeout
        current, hops = url, list[str]()
        while True:
            try:
                target = self.check(current, deadline)
            except UrlNotAllowed as exc:
                if not hops:
                    raise
                raise UrlNotAllowed(
                    f"{redact(hops[-1])} redirected to {redact(current)[:200]}, which is refused "
                    f"(nothing was sent there): {exc.message}"
                ) from exc
            status, response_headers, body = self._send(target, method, json, headers, deadline, max_bytes)
            location = response_headers.get("location")
            if not (follow_redirects and status in REDIRECTS and location):
                return OutboundResponse(
                    status=status,
                    headers=response_headers,
                    body=body,
                    url=target.url,
                    redirects=tuple(hops),
                    elapsed_ms=round((time.monotonic() - started) * 1000),
                )
            if len(hops) == MAX_REDIRECTS:
                raise OutboundFailure("redirects", redact(url), f"more than {MAX_REDIRECTS} redirects")
            hops.append(target.url)
            try:
                current = str(httpx2.URL(target.url).join(location))
            except (httpx2.InvalidURL, ValueError) as exc:
                raise OutboundFailure(
                    "bad_response", redact(target.url), "it redirected to an invalid URL"
                ) from exc
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, json = ("HEAD" if method == "HEAD" else "GET"), None

    def _ssl_context(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = httpx2.create_ssl_context()
            return self._ssl

    def _send(
        self,
        target: Target,
        method: str,
        json: Any,
        headers: Mapping[str, str] | None,
        deadline: float,
        max_bytes: int,
    ) -> tuple[int, dict[str, str], bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OutboundFailure("timeout", redact(target.url), "the time ran out before it could be sent")
        sent = {"User-Agent": self.user_agent, **(headers or {})}
        sent.update({r.name: r.value for r in self.headers if r.applies(target.host, target.port)})
        # The connection code imports httpcore2 (20 ms here), which nothing needs until a request
        # is sent: the server lists its tools without it.
        from session_mcp.models.pinned import exchange

        ssl_context = self._ssl_context() if target.scheme == "https" else None
        return exchange(target, method, json, sent, deadline, max_bytes, ssl_context)
