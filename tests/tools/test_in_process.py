"""What only a caller in the same process can send (the in-memory client, an agent framework that
embeds the server): values no JSON transport carries. The tool suite in test_tools.py also runs
over HTTP (tests/server/test_http.py); these cannot, since the SDK's JSON parser refuses them
first (stdio and HTTP answer a parse error, tested in test_pipes.py and by hand with curl)."""

from __future__ import annotations

from mcp import Client
from tool_calls import call, error


async def test_an_unpaired_surrogate_in_any_argument_is_refused_by_name_on_both_databases(
    client: Client,
) -> None:
    """No UTF-8 at all: in a state value, a history message or metadata it failed the database
    driver as an internal error."""
    await call(client, "session_create", session_id="s")
    await call(client, "state_set", session_id="s", key="k", value="before")
    refused = [  # (tool, the argument named, arguments)
        ("state_set", "value", {"session_id": "s", "key": "k", "value": "v\udfff"}),
        ("history_add", "content", {"session_id": "s", "role": "user", "content": "x\ud800y"}),
        ("memory_add", "metadata", {"session_id": "s", "text": "a fact", "metadata": {"k": ["\udc00"]}}),
    ]
    for tool, named, arguments in refused:
        text = await error(client, tool, **arguments)
        assert text.startswith(f"invalid_argument: {named} contains an unpaired surrogate"), text
    assert (await call(client, "state_get", session_id="s", key="k"))["value"] == "before"
    assert (await call(client, "history_get", session_id="s"))["messages"] == []
    assert (await call(client, "memory_search", session_id="s", query="a fact"))["results"] == []
