"""The host manifests in manifests/ against what the server really exposes: the console script, the
settings, the tools, the HTTP endpoint and the version."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from session_mcp.server.cli import parser
from session_mcp.server.http import MCP_PATH
from session_mcp.server.settings import Settings
from session_mcp.tools import ALL_TOOLS

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
(SCRIPT, TARGET), *_ = PROJECT["scripts"].items()
SETTINGS = {f"SESSION_MCP_{name.upper()}": name for name in Settings.model_fields}
HTTP_URL = f"http://{Settings.model_fields['host'].default}:{Settings.model_fields['port'].default}{MCP_PATH}"

# Where each host reads its config, and the key its servers live under.
STDIO = {
    "claude_desktop_config.json": "mcpServers",
    "claude_code.mcp.json": "mcpServers",
    "vscode.mcp.json": "servers",
    "cursor.mcp.json": "mcpServers",
}
HTTP = {
    "claude_code_http.mcp.json": "mcpServers",
    "vscode_http.mcp.json": "servers",
    "cursor_http.mcp.json": "mcpServers",
}


def load(name: str) -> Any:
    return json.loads((MANIFESTS / name).read_text())


def check_environment(env: dict[str, str], where: str) -> None:
    """Every variable the server is given is one of its settings, and a value it accepts."""
    for name, value in env.items():
        if name == "PYTHONPATH":
            continue
        assert name in SETTINGS, f"{where}: {name} is not a setting of session-mcp"
        if "${" in value:
            continue  # filled in by the host at install time
        try:
            Settings(**{SETTINGS[name]: value})  # type: ignore[arg-type]
        except ValidationError as exc:
            pytest.fail(f"{where}: {name}={value!r} is refused by the server: {exc}")


def test_every_manifest_is_listed_here_and_every_file_parses() -> None:
    known = {*STDIO, *HTTP, "claude_desktop_config.http.json", "server.json", "mcpb/manifest.json"}
    found = {str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.json")}
    assert found == known
    for name in found:
        load(name)


def test_every_session_mcp_variable_named_anywhere_in_the_manifests_is_a_setting() -> None:
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            for name in re.findall(r"SESSION_MCP_[A-Z0-9_]+", path.read_text()):
                assert name in SETTINGS, f"{path.name} names {name}, which is not a setting"


def test_the_console_script_is_what_stdio_configs_run() -> None:
    assert SCRIPT == "session-mcp" and TARGET == "session_mcp.server.cli:main"


@pytest.mark.parametrize("name", sorted(STDIO))
def test_stdio_configs_run_the_console_script_with_real_settings(name: str) -> None:
    servers = load(name)[STDIO[name]]
    entry = servers["session-mcp"]
    assert entry["command"] == SCRIPT and entry.get("args", []) == []
    assert entry.get("type", "stdio") == "stdio"
    check_environment(entry.get("env", {}), name)


@pytest.mark.parametrize("name", sorted(HTTP))
def test_http_configs_reach_the_streamable_http_endpoint_with_a_bearer_token(name: str) -> None:
    entry = load(name)[HTTP[name]]["session-mcp"]
    assert entry["url"] == HTTP_URL
    assert entry.get("type", "http") == "http"
    assert re.fullmatch(r"Bearer \$\{[^}]+\}", entry["headers"]["Authorization"])
    assert "command" not in entry and "env" not in entry


def test_claude_desktop_reaches_http_through_mcp_remote_with_the_token_out_of_the_args() -> None:
    entry = load("claude_desktop_config.http.json")["mcpServers"]["session-mcp"]
    assert entry["command"] == "npx" and entry["args"][:2] == ["-y", "mcp-remote"]
    assert HTTP_URL in entry["args"]
    header = entry["args"][entry["args"].index("--header") + 1]
    assert header == "Authorization:${AUTH_HEADER}" and entry["env"]["AUTH_HEADER"].startswith("Bearer ")


def test_the_serve_command_in_the_docs_starts_streamable_http() -> None:
    args = parser().parse_args(["serve", "--transport", "streamable-http"])
    assert args.transport == "streamable-http"
    readme = (ROOT / "README.md").read_text()
    assert "session-mcp serve --transport streamable-http" in readme
    assert 'SESSION_MCP_AUTH_TOKENS="' in readme and HTTP_URL in readme


def test_the_registry_entry_matches_the_package() -> None:
    server = load("server.json")
    assert server["$schema"].startswith("https://static.modelcontextprotocol.io/schemas/")
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", server["name"])
    assert 0 < len(server["description"]) <= 100
    assert server["version"] == PROJECT["version"]
    (package,) = server["packages"]
    assert package["registryType"] == "pypi" and package["identifier"] == PROJECT["name"]
    assert package["version"] == PROJECT["version"] and package["transport"] == {"type": "stdio"}
    assert package["runtimeHint"] == "uvx"  # uvx runs the console script named like the package
    assert PROJECT["name"] == SCRIPT
    variables = {v["name"]: v for v in package["environmentVariables"]}
    check_environment(
        {n: v.get("default", "") for n, v in variables.items() if "default" in v}, "server.json"
    )
    assert set(variables) <= set(SETTINGS)
    for variable in variables.values():
        if "choices" in variable:
            field = Settings.model_fields[SETTINGS[variable["name"]]]
            assert tuple(variable["choices"]) == field.annotation.__args__  # type: ignore[union-attr]
    # The PyPI ownership check of the MCP registry reads this marker from the package README.
    assert f"mcp-name: {server['name']}" in (ROOT / "README.md").read_text()


def test_the_desktop_extension_lists_the_real_tools_and_launches_the_console_script() -> None:
    manifest = load("mcpb/manifest.json")
    assert manifest["version"] == PROJECT["version"] and manifest["name"] == PROJECT["name"]
    assert [t["name"] for t in manifest["tools"]] == [spec.name for spec in ALL_TOOLS]
    assert all(t["description"] for t in manifest["tools"])
    server = manifest["server"]
    assert server["type"] == "python" and server["entry_point"] == "server/main.py"
    config = server["mcp_config"]
    assert config["command"] == "python" and config["args"] == ["${__dirname}/server/main.py"]
    assert config["env"]["PYTHONPATH"] == "${__dirname}/server/lib"
    check_environment(config["env"], "mcpb/manifest.json")
    for value in config["env"].values():
        for key in re.findall(r"\$\{user_config\.(\w+)\}", value):
            assert key in manifest["user_config"], f"env uses user_config.{key}, which is not declared"
    for key, option in manifest["user_config"].items():
        variable = next(n for n, v in config["env"].items() if v == f"${{user_config.{key}}}")
        if option.get("default"):
            check_environment({variable: option["default"]}, f"user_config.{key}")
    module, function = TARGET.split(":")
    launcher = (MANIFESTS / "mcpb" / server["entry_point"]).read_text()
    assert f"from {module} import {function}" in launcher and f"sys.exit({function}())" in launcher
    assert manifest["compatibility"]["runtimes"]["python"] == PROJECT["requires-python"]
