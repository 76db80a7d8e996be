"""URL ingestion against a real HTTP server on loopback: formats, re-adds, redirects, limits and
the SSRF matrix (reliability plan 5.6) under the ingestion policy, whose default is `public`.

The documents server lives on 127.0.0.1, which the default refuses: positive tests list it in the
allow list explicitly. A canary server records every request; each refused vector must leave it at
0 hits and store nothing. Names that resolve inward use an injected resolver (no DNS in tests)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_agent import Recorder, app_of, launch_app, serving
from knowledge_files import write_docx, write_pdf
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse

from session_mcp.models.clock import ManualClock
from session_mcp.models.config import LayerConfig, default_url_policy
from session_mcp.models.embedder import Embedder
from session_mcp.models.errors import UnsupportedFormat, UrlFetchFailed, UrlNotAllowed
from session_mcp.models.ingestion import KnowledgeConfig, classify, client_roots
from session_mcp.models.layer import SessionLayer
from session_mcp.models.outbound import Resolver, parse_allow, system_resolver
from session_mcp.models.tables import ChunkRow, DocumentRow

HTML = (
    b"<html><head><title>Lighthouse keeper's log</title><script>var secret = 1;</script></head>"
    b"<body><h1>Night watch</h1><p>The lamp was trimmed at dusk beside the cobalt walrus.</p></body></html>"
)


class Docs:
    """The documents server: its base URL, port, request log, and a body that tests can change."""

    def __init__(self, base: str, recorder: Recorder) -> None:
        self.base = base
        self.port = int(base.rsplit(":", 1)[1])
        self.recorder = recorder

    def url(self, path: str) -> str:
        return self.base + path


CHANGING = {"text": "The first edition mentions a saffron lantern."}


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docs]:
    folder = tmp_path_factory.mktemp("served")
    pdf = write_pdf(folder / "a.pdf", ["Cover page", "The obsidian glacier calves in spring."]).read_bytes()
    docx = write_docx(folder / "a.docx", "Minutes", "The velvet heron chaired the meeting.").read_bytes()
    recorder = Recorder()

    def fixed(body: bytes, content_type: str | None) -> Any:
        async def handler(_: Request) -> Response:
            return Response(body, headers={"content-type": content_type} if content_type else {})

        return handler

    async def changing(_: Request) -> Response:
        return PlainTextResponse(CHANGING["text"])

    async def to(request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=int(request.query_params["code"]))

    async def big(_: Request) -> Response:
        return PlainTextResponse("x" * 50_000)

    async def endless(_: Request) -> Response:
        async def forever() -> Any:
            while True:
                yield b"y" * 4096
                await anyio.sleep(0)

        return StreamingResponse(forever(), media_type="text/plain")

    async def bomb(_: Request) -> Response:
        body = gzip.compress(b"z" * 2_000_000)
        return Response(body, headers={"content-encoding": "gzip", "content-type": "text/plain"})

    async def slow(_: Request) -> Response:
        async def trickle() -> Any:
            for _ in range(100):
                yield b"."
                await anyio.sleep(0.05)

        return StreamingResponse(trickle(), media_type="text/plain")

    async def missing(_: Request) -> Response:
        return PlainTextResponse("no such page", status_code=404)

    routes = {
        "/page": fixed(HTML, "text/html; charset=utf-8"),  # no extension: the type decides
        "/report": fixed(pdf, "application/pdf"),
        "/notes.txt": fixed(b"Tide tables list the marigold buoy at noon.", "text/plain; charset=utf-8"),
        "/readme.md": fixed(b"# Guide\n\nThe pewter compass points north.", "application/octet-stream"),
        "/minutes": fixed(docx, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        "/data": fixed(b'{"mascot": "a tangerine ferret"}', "application/json"),
        "/fake.pdf": fixed(b"not a pdf at all", "application/pdf"),
        "/picture": fixed(b"\x89PNG\r\n\x1a\n", "image/png"),
        "/changing.txt": changing,
        "/to": to,
        "/big": big,
        "/endless": endless,
        "/bomb": bomb,
        "/slow": slow,
        "/missing": missing,
    }
    app = app_of({path: (["GET"], handler) for path, handler in routes.items()})
    with serving(recorder.wrap(app)) as base:
        yield Docs(base, recorder)


@pytest.fixture(scope="module")
def canary() -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()
    with serving(recorder.wrap(launch_app("/"))) as base:
        yield int(base.rsplit(":", 1)[1]), recorder


@pytest.fixture
def canary_port(canary: tuple[int, Recorder]) -> Iterator[int]:
    port, recorder = canary
    before = recorder.hits
    yield port
    assert recorder.hits == before, "a refused request reached the canary"


def resolver(table: dict[str, list[str]]) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            return system_resolver(host, port)
        return table[host]

    return resolve


@pytest.fixture
def make_layer(
    tmp_path: Path, clock: ManualClock, embedder: Embedder
) -> Iterator[Any]:  # (allow, resolver=None, **knowledge) -> SessionLayer
    built: list[SessionLayer] = []

    def make(
        allow: str = "public", table: dict[str, list[str]] | None = None, **knowledge: Any
    ) -> SessionLayer:
        n = len(built)
        layer = SessionLayer(
            LayerConfig(
                database_url=f"sqlite:///{tmp_path / f'kb{n}.db'}",
                data_dir=tmp_path / f"data{n}",
                knowledge=KnowledgeConfig(**knowledge),
                url_policy=default_url_policy(allow, resolver(table or {})),
            ),
            clock=clock,
            embedder=embedder,
        )
        layer.sessions.create("s1", "u1")
        built.append(layer)
        return layer

    yield make
    for layer in built:
        layer.close()


def stored(layer: SessionLayer) -> tuple[int, int]:
    with layer.db.read() as conn:
        documents = len(conn.execute(select(DocumentRow.__table__)).all())  # type: ignore[attr-defined]
        chunks = len(conn.execute(select(ChunkRow.__table__)).all())  # type: ignore[attr-defined]
    return documents, chunks


# -- what works --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "phrase", "title", "mime"),
    [
        ("/page", "cobalt walrus", "Lighthouse keeper's log", "text/html"),
        ("/report", "obsidian glacier", "report", "application/pdf"),
        ("/notes.txt", "marigold buoy", "notes.txt", "text/plain"),
        ("/readme.md", "pewter compass", "Guide", "text/markdown"),
        ("/minutes", "velvet heron", "Minutes", "wordprocessingml"),
        ("/data", "tangerine ferret", "data", "application/json"),
    ],
)
def test_a_url_listed_in_the_allow_list_is_fetched_parsed_and_found(
    make_layer: Any, docs: Docs, path: str, phrase: str, title: str, mime: str
) -> None:
    layer = make_layer(f"public,127.0.0.1:{docs.port}")
    url = docs.url(path)
    added = layer.knowledge.add("s1", url)
    (document,) = added.documents
    assert document.status == "added" and document.source == url and document.chunks >= 1
    assert document.title == title
    hit = layer.knowledge.search("s1", phrase, limit=1).results[0]
    assert hit.source == url and phrase in hit.text and "secret" not in hit.text
    info = layer.knowledge.list("s1").documents[0]
    assert mime in info.mime
    if path == "/report":
        assert hit.page == 2


def test_kind_url_and_auto_detection_agree_and_loopback_may_be_listed_by_keyword(
    make_layer: Any, docs: Docs
) -> None:
    layer = make_layer("loopback")
    assert classify(docs.url("/page"), "auto", client_roots((), None)) == "url"
    assert classify("ftp://example.com/x", "auto", client_roots((), None)) == "url"
    added = layer.knowledge.add("s1", docs.url("/page"), kind="url", scope="user")
    assert added.documents[0].status == "added"


def test_re_adding_an_unchanged_url_is_a_no_op_and_a_changed_one_replaces_its_chunks(
    make_layer: Any, docs: Docs
) -> None:
    layer = make_layer(f"127.0.0.1:{docs.port}")
    url = docs.url("/changing.txt")
    CHANGING["text"] = "The first edition mentions a saffron lantern."
    first = layer.knowledge.add("s1", url).documents[0]
    again = layer.knowledge.add("s1", url).documents[0]
    assert (again.status, again.document_id) == ("unchanged", first.document_id)
    CHANGING["text"] = "The second edition mentions a jade kettle instead."
    changed = layer.knowledge.add("s1", url).documents[0]
    assert (changed.status, changed.document_id) == ("updated", first.document_id)
    assert stored(layer) == (1, 1)
    assert layer.knowledge.search("s1", "saffron", mode="keyword").results == []
    assert "jade kettle" in layer.knowledge.search("s1", "jade kettle").results[0].text


def test_the_default_policy_refuses_the_same_loopback_url_and_sends_nothing(
    make_layer: Any, docs: Docs
) -> None:
    layer = make_layer()
    before = docs.recorder.hits
    with pytest.raises(UrlNotAllowed) as refused:
        layer.knowledge.add("s1", docs.url("/page"))
    assert "loopback" in refused.value.message and "SESSION_MCP_URL_ALLOW" in refused.value.message
    assert docs.recorder.hits == before and stored(layer) == (0, 0)


def test_the_default_allows_public_addresses_and_nothing_inward() -> None:
    policy = default_url_policy(
        resolver=resolver({"docs.example.com": ["93.184.216.34"], "v6.example.com": ["2606:4700::1"]})
    )
    assert policy.check("https://docs.example.com/guide.html").addresses
    assert policy.check("https://v6.example.com/").addresses
    for host in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "[fd00::1]", "[::1]"):
        with pytest.raises(UrlNotAllowed):
            policy.check(f"http://{host}/")
    assert [e.public for e in parse_allow("public, GLOBAL ,loopback")] == [True, True, False]


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
@pytest.mark.parametrize(
    "where",
    [
        "http://127.0.0.1:{canary}/",
        "http://localhost:{canary}/",
        "http://inward.test:{canary}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "file:///etc/passwd",
    ],
)
def test_a_redirect_to_a_refused_host_is_refused_and_nothing_is_sent_or_stored(
    make_layer: Any, docs: Docs, canary_port: int, code: int, where: str
) -> None:
    layer = make_layer(f"public,127.0.0.1:{docs.port}", {"inward.test": ["127.0.0.1"]})
    target = where.format(canary=canary_port)
    with pytest.raises(UrlNotAllowed) as refused:
        layer.knowledge.add("s1", docs.url(f"/to?code={code}&url={target}"))
    assert "redirected to" in refused.value.message and "nothing was sent there" in refused.value.message
    assert stored(layer) == (0, 0)


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_to_an_allowed_host_is_followed_and_the_source_is_the_url_asked_for(
    make_layer: Any, docs: Docs, code: int
) -> None:
    layer = make_layer(f"127.0.0.1:{docs.port},mirror.test", {"mirror.test": ["127.0.0.1"]})
    url = docs.url(f"/to?code={code}&url=http://mirror.test:{docs.port}/notes.txt")
    document = layer.knowledge.add("s1", url).documents[0]
    assert document.source == url and document.title == "notes.txt"
    assert "marigold buoy" in layer.knowledge.search("s1", "marigold buoy").results[0].text


# -- the SSRF matrix (reliability plan 5.6) ----------------------------------------------------

VECTORS = [
    "http://127.0.0.1:{port}/",
    "http://127.1:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://localhost:{port}/",
    "http://inward.test:{port}/",
    "http://mixed.test:{port}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/",
    "http://100.64.0.1/",
    "http://10.0.0.1/",
    "http://192.168.0.1/",
    "http://[fe80::1]/",
    "http://0.0.0.0:{port}/",
    "file:///etc/passwd",
    "ftp://127.0.0.1:{port}/",
    "data:text/plain,hello",
    "gopher://127.0.0.1:{port}/",
    "http://user:pw@docs.example.com/",
]
INWARD = {"inward.test": ["127.0.0.1"], "mixed.test": ["93.184.216.34", "127.0.0.1"]}


@pytest.mark.parametrize("vector", VECTORS)
def test_every_ssrf_vector_is_refused_with_url_not_allowed_and_no_canary_hit(
    make_layer: Any, canary_port: int, vector: str
) -> None:
    layer = make_layer(table=INWARD)
    with pytest.raises(UrlNotAllowed):
        layer.knowledge.add("s1", vector.format(port=canary_port), kind="url")
    assert stored(layer) == (0, 0)


@pytest.mark.parametrize(
    "vector", ["http://169.254.169.254/latest/", "http://[fe80::1]/", "http://0.0.0.0:1/"]
)
def test_link_local_and_metadata_addresses_stay_refused_whatever_the_allow_list(
    make_layer: Any, vector: str
) -> None:
    layer = make_layer("public,loopback,private,shared,0.0.0.0/0,::/0")
    with pytest.raises(UrlNotAllowed, match="never allowed"):
        layer.knowledge.add("s1", vector)


# -- limits and failures -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big", "/endless", "/bomb"])
def test_an_oversized_body_is_refused_and_nothing_is_stored(make_layer: Any, docs: Docs, path: str) -> None:
    layer = make_layer(f"127.0.0.1:{docs.port}", max_url_bytes=10_000)
    with pytest.raises(UrlFetchFailed, match="over the limit of 10000 bytes") as failed:
        layer.knowledge.add("s1", docs.url(path))
    assert "SESSION_MCP_KNOWLEDGE_MAX_URL_BYTES" in failed.value.message
    assert stored(layer) == (0, 0)


def test_a_slow_server_hits_the_time_limit(make_layer: Any, docs: Docs) -> None:
    layer = make_layer(f"127.0.0.1:{docs.port}", url_timeout_seconds=0.5)
    with pytest.raises(UrlFetchFailed, match=r"longer than 0\.5 s") as failed:
        layer.knowledge.add("s1", docs.url("/slow"))
    assert "SESSION_MCP_KNOWLEDGE_URL_TIMEOUT_SECONDS" in failed.value.message
    assert stored(layer) == (0, 0)


def test_error_answers_unreachable_hosts_and_unsupported_types_fail_clearly(
    make_layer: Any, docs: Docs, canary_port: int
) -> None:
    layer = make_layer(f"127.0.0.1:{docs.port},nowhere.test,127.0.0.1:1", {"nowhere.test": []})
    with pytest.raises(UrlFetchFailed, match="HTTP 404"):
        layer.knowledge.add("s1", docs.url("/missing"))
    with pytest.raises(UrlFetchFailed, match="could not be reached"):
        layer.knowledge.add("s1", "http://nowhere.test/")
    with pytest.raises(UrlFetchFailed, match="could not be reached"):
        layer.knowledge.add("s1", "http://127.0.0.1:1/")
    with pytest.raises(UnsupportedFormat, match="served as application/pdf"):
        layer.knowledge.add("s1", docs.url("/fake.pdf"))
    with pytest.raises(UnsupportedFormat):
        layer.knowledge.add("s1", docs.url("/picture"))
    assert stored(layer) == (0, 0)


def test_a_bad_url_allow_setting_stops_start_up() -> None:
    from pydantic import ValidationError

    from session_mcp.server.settings import Settings

    with pytest.raises(ValidationError, match="not a keyword"):
        Settings(url_allow="public,not a host!")
    assert Settings().url_allow == "public"
