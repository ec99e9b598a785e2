"""Settings: environment variables, validation, unknown keys."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import cli
from service.settings import ServiceSettings, SyncMode, unknown_environment_keys


def test_settings_read_lmindexer_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMINDEXER_BUNDLE_DIR", "/b")
    monkeypatch.setenv("LMINDEXER_BATCH_MAX_SIZE", "7")
    monkeypatch.setenv("LMINDEXER_REDIS_URL", "redis://h:1/2")
    monkeypatch.setenv("LMINDEXER_API_KEY", "s3cr3t-value")
    settings = ServiceSettings()
    assert settings.bundle_dir == Path("/b")
    assert settings.batch_max_size == 7
    assert settings.redis_url == "redis://h:1/2"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)  # the key never appears in logs


def test_settings_default_to_embedded_everything(tmp_path: Path) -> None:
    settings = ServiceSettings(bundle_dir=tmp_path)
    assert settings.redis_url is None and settings.api_key is None and settings.store_path is None
    assert settings.store_synchronous is SyncMode.FULL
    assert settings.max_query_chars == 2000 and settings.max_batch_documents == 1000


def test_settings_reject_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="redis_ulr"):
        ServiceSettings(bundle_dir=tmp_path, redis_ulr="redis://x")  # type: ignore[call-arg]


def test_settings_reject_out_of_range_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMINDEXER_BATCH_MAX_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_max_size"):
        ServiceSettings(bundle_dir=tmp_path)


def test_unknown_environment_keys_names_typos_only() -> None:
    environ = {"LMINDEXER_REDIS_ULR": "x", "LMINDEXER_REDIS_URL": "y", "LMINDEXER_LOG_LEVEL": "INFO",
               "LMINDEXER_CACHE_DIR": "/tmp/cache",
               "PATH": "/bin"}
    assert unknown_environment_keys(environ) == ["LMINDEXER_REDIS_ULR"]


def test_every_setting_is_described() -> None:
    for name, field in ServiceSettings.model_fields.items():
        assert field.description, name


def test_cli_without_bundle_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMINDEXER_BUNDLE_DIR", raising=False)
    with pytest.raises(cli.SettingsError, match="--bundle") as info:
        cli.build_settings(argparse.Namespace(bundle_dir=None, host=None, port=None))
    assert info.value.exit_status == 2


def test_cli_options_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMINDEXER_PORT", "9000")
    settings = cli.build_settings(argparse.Namespace(bundle_dir="/b", host="0.0.0.0", port=None))
    assert (settings.port, settings.host, settings.bundle_dir) == (9000, "0.0.0.0", Path("/b"))
