"""Settings read from the environment: what an empty or a bad value means."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest
from pydantic import ValidationError

from session_mcp.server.settings import Settings


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_path_setting_means_its_default_not_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    for name in ("DATA_DIR", "MODEL_PATH", "TOKENIZER_PATH", "AUTH_TOKENS_FILE", "DATABASE_URL"):
        monkeypatch.setenv(f"SESSION_MCP_{name}", blank)
    settings = Settings()
    default = platformdirs.user_data_path("session-mcp", appauthor=False)
    assert settings.data_dir == default and settings.data_dir != Path(".")
    assert (
        settings.model_path is None and settings.tokenizer_path is None and settings.auth_tokens_file is None
    )
    assert settings.resolved_database_url() == f"sqlite:///{default / 'session-mcp.db'}"


def test_a_path_setting_that_is_given_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SESSION_MCP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SESSION_MCP_MODEL_PATH", str(tmp_path / "model.onnx"))
    settings = Settings()
    assert settings.data_dir == tmp_path / "data" and settings.model_path == tmp_path / "model.onnx"


def test_an_empty_number_is_refused_with_the_settings_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_MCP_EMBEDDING_THREADS", "")
    with pytest.raises(ValidationError, match="embedding_threads"):
        Settings()
