"""Project checks: lint, format, strict types, import layering, packaging, and docs that match the code."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from session_mcp.models.errors import ALL_ERRORS
from session_mcp.server.settings import Settings
from session_mcp.tools import ALL_TOOLS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ("server", "tools", "models")


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_ruff_lint_passes() -> None:
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_our_packages(tmp_path: Path) -> None:
    # The folders install as session_mcp.*; a link tree gives mypy the same module names.
    tree = tmp_path / "session_mcp"
    tree.mkdir()
    for package in PACKAGES:
        (tree / package).symlink_to(ROOT / package)
    result = run(
        str(BIN / "mypy"),
        "--strict",
        "--namespace-packages",
        "--explicit-package-bases",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / ".mypy_cache"),
        "-p",
        "session_mcp",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold() -> None:
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_installs_only_the_session_mcp_namespace(tmp_path: Path) -> None:
    result = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."
    )
    if result.returncode != 0:  # no setuptools in the venv: let pip build in isolation
        result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), ".")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("session_mcp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("session_mcp-")}
    assert tops == {"session_mcp"}
    assert "session_mcp/models/data/tokenizer.json" in names
    assert "session_mcp/server/cli.py" in names and "session_mcp/tools/state.py" in names


def test_print_is_banned_in_our_packages() -> None:
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            assert not re.search(r"^\s*print\(", source.read_text(), re.MULTILINE), source


README = (ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else ""


def _table_rows(heading: str) -> set[str]:
    section = README.split(heading, 1)[1] if heading in README else ""
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)`", section, re.MULTILINE))


@pytest.mark.parametrize("tool", sorted(spec.name for spec in ALL_TOOLS))
def test_every_tool_is_in_the_readme_tools_table(tool: str) -> None:
    assert tool in _table_rows("## Tools"), f"add `{tool}` to the README's Tools table"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_settings_table(name: str) -> None:
    assert f"SESSION_MCP_{name.upper()}" in _table_rows("## Settings"), f"document SESSION_MCP_{name.upper()}"


@pytest.mark.parametrize("code", sorted(error.code for error in ALL_ERRORS))
def test_every_error_code_is_in_the_readme(code: str) -> None:
    assert f"`{code}`" in README


def test_readme_tables_name_nothing_that_does_not_exist() -> None:
    assert _table_rows("## Tools") == {spec.name for spec in ALL_TOOLS}
    assert _table_rows("## Settings") == {f"SESSION_MCP_{n.upper()}" for n in Settings.model_fields}


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```", README, re.DOTALL)
    assert command is not None, "README must mark its test command"
    assert command.group(1).strip() in (ROOT / ".ci" / "run").read_text()


def test_help_documents_every_setting_and_tool() -> None:
    result = run(str(BIN / "session-mcp"), "--help")
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert f"SESSION_MCP_{name.upper()}" in result.stdout
    for spec in ALL_TOOLS:
        assert spec.name in result.stdout
