"""The outbound policy against real HTTP servers on loopback: the SSRF matrix as it applies to agent URLs.

A canary server records every request it gets; each refused vector must leave it at 0 hits. Names that
must resolve inward use an injected resolver (no DNS in tests); numeric encodings go through the real
getaddrinfo, which is what decides where they lead."""

from __future__ import annotations

import datetime
import gzip
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_agent import Recorder, app_of, free_port, launch_app, serving
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse

from session_mcp.models.errors import UrlNotAllowed
from session_mcp.models.outbound import OutboundFailure, OutboundPolicy, parse_allow, parse_headers


@pytest.fixture(scope="module")
def canary() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/"))) as base:
        yield base, recorder


@pytest.fixture
def canary_port(canary: tuple[str, Recorder]) -> Iterator[int]:
    base, recorder = canary
    before = recorder.hits
    yield int(base.rsplit(":", 1)[1])
    assert recorder.hits == before, "a refused request reached the canary"


def resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "localhost",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("host", [*LOOPBACK_SPELLINGS, "[::1]"])
def test_every_spelling_of_loopback_is_refused_when_loopback_is_not_allowed(
    canary_port: int, host: str
) -> None:
    policy = OutboundPolicy("private")
    with pytest.raises(UrlNotAllowed, match="a loopback address not in the server's allow list"):
        policy.fetch("GET", f"http://{host}:{canary_port}/health", timeout=5, max_bytes=1000)


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_reaches_loopback_when_allowed(
    canary: tuple[str, Recorder], host: str
) -> None:
    base, recorder = canary
    port = base.rsplit(":", 1)[1]
    before = recorder.hits
    got = OutboundPolicy("loopback").fetch("GET", f"http://{host}:{port}/health", timeout=5, max_bytes=1000)
    assert got.status == 200 and got.json()["status"] == "ok"
    assert recorder.hits == before + 1


@pytest.mark.parametrize("policy", ["loopback", "private"])
def test_dotted_octal_is_refused_as_ambiguous_whatever_the_allow_list(canary_port: int, policy: str) -> None:
    """getaddrinfo reads 0177.0.0.1 as 127.0.0.1, other parsers as 177.0.0.1: it is never sent anywhere."""
    with pytest.raises(UrlNotAllowed, match="is not a valid URL"):
        OutboundPolicy(policy).fetch("GET", f"http://0177.0.0.1:{canary_port}/", timeout=5, max_bytes=1000)


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("169.254.169.254", "a link-local address of a cloud metadata service"),
        ("[fd00:ec2::254]", "a private address of a cloud metadata service"),
        ("100.100.100.200", "address of a cloud metadata service"),
        ("169.254.1.1", "a link-local address"),
        ("[fe80::1]", "a link-local address"),
        ("[fe80::1%25lo]", "a link-local address"),
        ("[::ffff:169.254.169.254]", "a cloud metadata service"),
        ("0.0.0.0", "an unspecified address"),
        ("[::]", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("240.0.0.1", "a reserved address"),
    ],
)
def test_link_local_metadata_and_unspecified_addresses_are_refused_whatever_the_allow_list(
    canary_port: int, host: str, kind: str
) -> None:
    everything = OutboundPolicy("0.0.0.0/0,::/0,169.254.169.254")
    with pytest.raises(UrlNotAllowed) as refused:
        everything.fetch("GET", f"http://{host}:{canary_port}/", timeout=5, max_bytes=1000)
    assert kind in refused.value.message and "never allowed" in refused.value.message


def test_the_refusal_names_the_url_the_address_and_its_kind() -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        OutboundPolicy().check("http://169.254.169.254/latest/meta-data/")
    assert str(refused.value).startswith(
        "url_not_allowed: http://169.254.169.254/latest/meta-data/ resolves to 169.254.169.254, "
        "a link-local address of a cloud metadata service; such addresses are never allowed"
    )


@pytest.mark.parametrize("name", ["metadata.google.internal", "metadata.google.internal.", "metadata"])
def test_metadata_host_names_are_refused_before_any_lookup(name: str) -> None:
    looked_up: list[str] = []
    policy = OutboundPolicy("0.0.0.0/0", resolver=lambda host, port: looked_up.append(host) or ["10.0.0.1"])
    with pytest.raises(UrlNotAllowed, match="cloud metadata service"):
        policy.check(f"http://{name}/computeMetadata/v1/")
    assert looked_up == []


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "172.16.0.1", "192.168.1.10", "[fc00::1]", "127.0.0.1", "[::1]"]
)
def test_the_default_allows_loopback_and_private_networks(host: str) -> None:
    target = OutboundPolicy().check(f"http://{host}:8000/agent")
    assert target.port == 8000 and len(target.addresses) == 1


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("8.8.8.8", "a public address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("198.18.0.1", "a special-purpose address"),
        ("[2001:4860::8888]", "a public address"),
    ],
)
def test_the_default_refuses_public_and_other_networks(host: str, kind: str) -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        OutboundPolicy(setting="SESSION_MCP_AGENT_ALLOW").check(f"http://{host}/agent")
    assert f"{kind} not in SESSION_MCP_AGENT_ALLOW" in refused.value.message
    assert "ask the server's operator to add" in refused.value.message


def test_public_hosts_pass_only_when_listed_by_name_address_or_suffix() -> None:
    table = resolver({"agents.example.com": ["93.184.216.34"], "a.corp.example": ["203.0.113.9"]})
    with pytest.raises(UrlNotAllowed, match="a public address not in"):
        OutboundPolicy(resolver=table).check("https://agents.example.com/agent")
    assert (
        OutboundPolicy("agents.example.com", resolver=table).check("https://agents.example.com/agent").port
        == 443
    )
    assert OutboundPolicy("93.184.216.0/24", resolver=table).check("http://agents.example.com/")
    assert OutboundPolicy("*.corp.example", resolver=table).check("http://a.corp.example/")
    with pytest.raises(UrlNotAllowed):
        OutboundPolicy("*.corp.example", resolver=table).check("http://agents.example.com/")
    ported = OutboundPolicy("agents.example.com:8443", resolver=table)
    assert ported.check("https://agents.example.com:8443/").port == 8443
    with pytest.raises(UrlNotAllowed):
        ported.check("https://agents.example.com/")


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5", "169.254.169.254"],
        ["127.0.0.1", "::ffff:169.254.169.254"],
        ["192.168.1.10", "8.8.8.8"],
        ["::1", "0.0.0.0"],
    ],
)
def test_every_resolved_address_is_checked_not_just_the_first(addresses: list[str]) -> None:
    policy = OutboundPolicy(resolver=resolver({"mixed.test": addresses}))
    with pytest.raises(UrlNotAllowed, match=f"resolves to {addresses[1].removeprefix('::ffff:')}"):
        policy.check("http://mixed.test/agent")


def test_a_name_that_does_not_resolve_is_unreachable_not_refused() -> None:
    with pytest.raises(OutboundFailure) as failed:
        OutboundPolicy(resolver=resolver({})).check("http://nowhere.test/")
    assert failed.value.kind == "unreachable" and "does not resolve" in failed.value.detail


def test_the_connection_goes_to_the_checked_address_with_the_name_in_the_host_header(
    canary: tuple[str, Recorder],
) -> None:
    """DNS rebinding: the resolver answers loopback once, then the metadata address. The request is
    resolved once and connects to what was checked, so the second answer is never used."""
    base, recorder = canary
    port = base.rsplit(":", 1)[1]
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    calls: list[str] = []

    def rebinding(host: str, _: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    got = OutboundPolicy("agent.test", resolver=rebinding).fetch(
        "GET", f"http://agent.test:{port}/health", timeout=5, max_bytes=1000
    )
    assert got.status == 200 and calls == ["agent.test"]
    assert recorder.requests[-1].headers["host"] == f"agent.test:{port}"


def test_the_next_resolved_address_is_tried_when_one_refuses_the_connection(
    canary: tuple[str, Recorder],
) -> None:
    base, _ = canary
    port = base.rsplit(":", 1)[1]
    policy = OutboundPolicy("loopback", resolver=resolver({"two.test": ["127.0.0.2", "127.0.0.1"]}))
    closed = free_port()
    assert policy.fetch("GET", f"http://two.test:{port}/health", timeout=5, max_bytes=1000).status == 200
    with pytest.raises(OutboundFailure) as failed:
        policy.fetch("GET", f"http://two.test:{closed}/health", timeout=5, max_bytes=1000)
    assert failed.value.kind == "unreachable"


@pytest.mark.parametrize(
    "url",
    [
        "http://good.example@127.0.0.1:{port}/",
        "http://user:pw@good.example:{port}/",
        "http://127.0.0.1:{port}#@good.example/",
        "http://good.example\\@127.0.0.1:{port}/",
        "http://good.example:{port}/\r\nX-Injected: 1",
        "file:///etc/passwd",
        "ftp://good.example:{port}/",
        "gopher://good.example:{port}/_",
        "dict://good.example:{port}/",
        "data:text/plain,hello",
        "javascript:alert(1)",
        "jar:http://good.example:{port}/x!/",
        "http://good.example:{port}/" + "a" * 100_000,
        "http:///nohost",
    ],
)
def test_parser_confusion_and_other_schemes_are_refused_before_any_connection(
    canary_port: int, url: str
) -> None:
    policy = OutboundPolicy("good.example", resolver=resolver({"good.example": ["10.9.9.9"]}))
    with pytest.raises(UrlNotAllowed):
        policy.fetch("GET", url.format(port=canary_port), timeout=5, max_bytes=1000)


@pytest.fixture(scope="module")
def redirector() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    async def to(request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=int(request.query_params["code"]))

    async def loop(request: Request) -> Response:
        return RedirectResponse("/loop", status_code=302)

    async def chain(request: Request) -> Response:
        n = int(request.path_params["n"])
        return RedirectResponse(f"/chain/{n - 1}" if n else "/echo", status_code=302)

    async def echo(request: Request) -> Response:
        return JSONResponse({"method": request.method, "body": (await request.body()).decode()})

    app = app_of(
        {
            "/to": (["GET", "POST", "HEAD"], to),
            "/loop": (["GET", "POST"], loop),
            "/chain/{n:int}": (["GET", "POST"], chain),
            "/echo": (["GET", "POST"], echo),
        }
    )
    with serving(recorder.wrap(app)) as base:
        yield base, recorder


def redirect_policy(redirector: tuple[str, Recorder]) -> tuple[OutboundPolicy, str]:
    """good.example is the redirector (on loopback); loopback itself is not allowed."""
    base, _ = redirector
    port = base.rsplit(":", 1)[1]
    table = resolver({"good.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    return OutboundPolicy("good.example,other.example", resolver=table), f"http://good.example:{port}"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "where", ["http://127.0.0.1:{canary}/", "http://169.254.169.254/latest/", "file:///etc/passwd"]
)
def test_a_redirect_to_a_refused_host_is_reported_and_nothing_is_sent_there(
    redirector: tuple[str, Recorder], canary_port: int, code: int, where: str
) -> None:
    policy, base = redirect_policy(redirector)
    target = where.format(canary=canary_port)
    with pytest.raises(UrlNotAllowed) as refused:
        policy.fetch("POST", f"{base}/to?code={code}&url={target}", json={"q": 1}, timeout=5, max_bytes=1000)
    assert "redirected to" in refused.value.message and "nothing was sent there" in refused.value.message


def test_allowed_redirects_are_followed_with_the_right_method(redirector: tuple[str, Recorder]) -> None:
    policy, base = redirect_policy(redirector)
    kept = policy.fetch("POST", f"{base}/to?code=307&url=/echo", json={"q": 1}, timeout=5, max_bytes=1000)
    assert kept.json() == {"method": "POST", "body": '{"q":1}'} and len(kept.redirects) == 1
    changed = policy.fetch("POST", f"{base}/to?code=303&url=/echo", json={"q": 1}, timeout=5, max_bytes=1000)
    assert changed.json() == {"method": "GET", "body": ""}
    port = base.rsplit(":", 1)[1]
    moved = policy.fetch(
        "GET", f"{base}/to?code=302&url=http://other.example:{port}/echo", timeout=5, max_bytes=1000
    )
    assert moved.url == f"http://other.example:{port}/echo"


def test_redirect_loops_and_long_chains_stop(redirector: tuple[str, Recorder]) -> None:
    policy, base = redirect_policy(redirector)
    for path in ("/loop", "/chain/6"):
        with pytest.raises(OutboundFailure) as failed:
            policy.fetch("GET", base + path, timeout=5, max_bytes=1000)
        assert failed.value.kind == "redirects"
    assert policy.fetch("GET", base + "/chain/4", timeout=5, max_bytes=1000).status == 200


def test_configured_credentials_go_to_their_host_only_and_callers_cannot_add_any(
    redirector: tuple[str, Recorder],
) -> None:
    base, recorder = redirector
    port = base.rsplit(":", 1)[1]
    table = resolver({"good.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    policy = OutboundPolicy(
        "good.example,other.example", headers="good.example=Authorization: Bearer s3cret", resolver=table
    )
    policy.fetch(
        "GET",
        f"http://good.example:{port}/to?code=302&url=http://other.example:{port}/echo",
        timeout=5,
        max_bytes=1000,
    )
    first, second = recorder.requests[-2:]
    assert first.headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.headers and second.headers["host"] == f"other.example:{port}"
    for forbidden in ("Authorization", "Cookie", "Host"):
        with pytest.raises(ValueError):
            policy.fetch(
                "GET", f"http://good.example:{port}/echo", headers={forbidden: "x"}, timeout=5, max_bytes=1
            )


def test_credentials_are_never_sent_in_plain_text_to_a_public_address() -> None:
    table = resolver({"agents.example.com": ["93.184.216.34"]})
    policy = OutboundPolicy(
        "agents.example.com", headers="agents.example.com=X-Auth-Token: t", resolver=table
    )
    with pytest.raises(UrlNotAllowed, match="use https://"):
        policy.check("http://agents.example.com/agent")
    assert policy.check("https://agents.example.com/agent")


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    async def big(_: Request) -> Response:
        return PlainTextResponse("x" * 5000)

    async def endless(_: Request) -> Response:
        async def forever() -> Any:
            while True:
                yield b"y" * 4096
                await anyio.sleep(0)

        return StreamingResponse(forever())

    async def bomb(_: Request) -> Response:
        return Response(gzip.compress(b"\0" * 2_000_000), headers={"content-encoding": "gzip"})

    async def trickle(_: Request) -> Response:
        async def bytes_slowly() -> Any:
            for _ in range(100):
                yield b"."
                await anyio.sleep(0.05)

        return StreamingResponse(bytes_slowly())

    app = app_of(
        {
            "/big": (["GET"], big),
            "/endless": (["GET"], endless),
            "/bomb": (["GET"], bomb),
            "/trickle": (["GET"], trickle),
        }
    )
    with serving(app) as base:
        yield base


@pytest.mark.parametrize("path", ["/big", "/endless", "/bomb"])
def test_answers_over_the_byte_cap_are_refused(hostile: str, path: str) -> None:
    with pytest.raises(OutboundFailure) as failed:
        OutboundPolicy().fetch("GET", hostile + path, timeout=10, max_bytes=4096)
    assert failed.value.kind == "too_large"


def test_one_deadline_covers_the_whole_exchange_even_when_bytes_keep_trickling(hostile: str) -> None:
    started = time.monotonic()
    with pytest.raises(OutboundFailure) as failed:
        OutboundPolicy().fetch("GET", hostile + "/trickle", timeout=0.5, max_bytes=100_000)
    assert failed.value.kind == "timeout"
    assert time.monotonic() - started < 2.0  # each read is short; only a total deadline stops this


def test_allow_list_and_header_settings_are_parsed_strictly() -> None:
    entries = parse_allow(
        "loopback, private ,10.1.0.0/16,203.0.113.7,[2001:db8::1]:8000,agents.example.com:8443,*.corp"
    )
    assert [e.text for e in entries][-2:] == ["agents.example.com:8443", "*.corp"]
    assert parse_allow("") == ()
    for bad in ("10.0.0.0/33", "host:99999", "bad host", "[::1"):
        with pytest.raises(ValueError):
            parse_allow(bad)
    rules = parse_headers("a.example=Authorization: Bearer x, [::1]:8000=X-Auth-Token: y")
    assert [(r.host, r.port, r.name) for r in rules] == [
        ("a.example", None, "Authorization"),
        ("::1", 8000, "X-Auth-Token"),
    ]
    for bad in (
        "a.example",
        "a.example=s3cr3t",
        "=X: s3cr3t",
        "a.example=Host: s3cr3t",
        "a.example=Bad Name: s3cr3t",
    ):
        with pytest.raises(ValueError) as refused:
            parse_headers(bad)
        assert "s3cr3t" not in str(refused.value)  # values are secrets: never echoed


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for the name agent.test (and nothing else)."""
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("agent.test")]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = build("test CA", ca_name, ca_key, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = build("agent.test", ca_name, leaf_key, ca_key, ca=False)
    paths = directory / "ca.pem", directory / "agent.pem", directory / "agent.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_https_connects_to_the_checked_address_with_the_name_as_sni_and_certificate_name(
    tmp_path: Path,
) -> None:
    ca, cert, key = _certificates(tmp_path)
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/")), ssl_certfile=str(cert), ssl_keyfile=str(key)) as base:
        port = base.rsplit(":", 1)[1]
        trust = ssl.create_default_context(cafile=str(ca))
        policy = OutboundPolicy(
            "loopback", resolver=resolver({"agent.test": ["127.0.0.1"]}), ssl_context=trust
        )
        got = policy.fetch("GET", f"https://agent.test:{port}/health", timeout=5, max_bytes=1000)
        assert got.status == 200 and recorder.requests[-1].headers["host"] == f"agent.test:{port}"
        # The same server by its address: the certificate does not name 127.0.0.1, so TLS fails closed.
        with pytest.raises(OutboundFailure) as failed:
            policy.fetch("GET", f"https://127.0.0.1:{port}/health", timeout=5, max_bytes=1000)
        assert failed.value.kind == "unreachable" and "certificate" in failed.value.detail.lower()
        assert recorder.hits == 1


def test_a_host_name_that_takes_too_long_to_resolve_is_a_timeout_within_the_requests_time() -> None:
    """getaddrinfo has no timeout of its own; the request's deadline bounds the wait for it."""
    release = threading.Event()
    asked: list[str] = []

    def stuck(host: str, port: int) -> list[str]:
        asked.append(host)
        release.wait(60)  # as a resolver whose name servers do not answer
        return ["93.184.216.34"]

    policy = OutboundPolicy("0.0.0.0/0", resolver=stuck)
    started = time.monotonic()
    try:
        with pytest.raises(OutboundFailure) as failed:
            policy.fetch("GET", "http://slow.example/", timeout=0.5, max_bytes=1000)
        waited = time.monotonic() - started
    finally:
        release.set()
    assert failed.value.kind == "timeout"
    assert "slow.example did not resolve within" in failed.value.detail
    assert asked == ["slow.example"]
    assert 0.5 <= waited < 5
