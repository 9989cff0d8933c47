"""Settings: env vars read once, wrong values refused with one line, secrets never shown."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest
from moto import mock_aws

from common.settings import ConfigError, Settings, load_settings, redact_url

SECRET = "s" * 40


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, the documented defaults apply (15-minute access tokens, port 8000)."""
    for name in ("OPENAI_TIMEOUT", "JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "PORT", "DB_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.jwt_access_token_expire_minutes == 15
    assert settings.openai_timeout == 120
    assert settings.port == 8000
    assert settings.db_pool_size == 20
    assert settings.db_max_overflow == 10
    assert settings.rate_limiting_enabled is True


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each spec variable is read from the environment by its upper-case name."""
    monkeypatch.setenv("OPENAI_TIMEOUT", "30")
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "5")
    monkeypatch.setenv("REDIS_TIMEOUT", "2.5")
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("METRICS_ENABLED", "false")
    monkeypatch.setenv("JWT_REFRESH_TOKEN_EXPIRE_DAYS", "3")
    settings = load_settings()
    assert (settings.openai_timeout, settings.openai_max_retries) == (30, 5)
    assert settings.redis_timeout == 2.5
    assert settings.workers == 4
    assert settings.log_level == "DEBUG"
    assert settings.metrics_enabled is False
    assert settings.jwt_refresh_token_expire_days == 3


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("OPENAI_TIMEOUT", "soon", "OPENAI_TIMEOUT:"),
        ("PORT", "70000", "PORT:"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL:"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL: must be a postgresql:// URL"),
        ("REDIS_URL", "http://x", "REDIS_URL:"),
        ("JWT_SECRET_KEY", "short", "JWT_SECRET_KEY: must be at least 32 bytes"),
        ("RATE_LIMITING_ENABLED", "perhaps", "RATE_LIMITING_ENABLED:"),
        ("TRUSTED_PROXIES", "not-a-network", "TRUSTED_PROXIES:"),
    ],
)
def test_a_wrong_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    """A malformed variable raises ConfigError whose single line starts with its name."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message
    if name == "JWT_SECRET_KEY":
        assert value not in message


def test_a_function_stops_at_start_with_one_line() -> None:
    """A function whose settings are wrong exits 2 at import, printing one line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "JWT_SECRET_KEY": "too-short", "PYTHONPATH": "."}
    code = (
        "import importlib.util as u;"
        "s=u.spec_from_file_location('m','functions/auth_token/main.py');"
        "m=u.module_from_spec(s);s.loader.exec_module(m)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "bradax auth_token: configuration error: JWT_SECRET_KEY: must be at least 32 bytes"
    ]


def test_secrets_are_hidden_in_reprs() -> None:
    """Secret settings print as '**********' and URL passwords are redacted for logs."""
    settings = Settings(
        jwt_secret_key=SECRET,
        openai_api_key="sk-live-123",
        database_url="postgresql://app:hunter2@db:5432/bradax",
    )
    text = repr(settings) + str(settings)
    assert SECRET not in text
    assert "sk-live-123" not in text
    assert "hunter2" not in text
    assert redact_url("postgresql://app:hunter2@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_model_routes_and_prices_parse_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """MODEL_ROUTES and MODEL_PRICES are JSON; prices become exact Decimals."""
    monkeypatch.setenv(
        "MODEL_ROUTES",
        json.dumps(
            {
                "local-llama": {
                    "base_url": "http://vllm:8000/v1",
                    "upstream_model": "llama",
                    "input_per_1m": "0.05",
                    "output_per_1m": "0.10",
                    "fallbacks": ["gpt-4.1-nano"],
                }
            }
        ),
    )
    monkeypatch.setenv("MODEL_PRICES", json.dumps({"gpt-4.1-nano": ["0.12", "0.48"]}))
    settings = load_settings()
    route = settings.model_routes["local-llama"]
    assert route.base_url == "http://vllm:8000/v1"
    assert str(route.input_per_1m) == "0.05"
    assert route.fallbacks == ("gpt-4.1-nano",)
    assert [str(p) for p in settings.model_prices["gpt-4.1-nano"]] == ["0.12", "0.48"]


def test_a_route_cannot_fall_back_to_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model listing itself as its fallback is refused at start."""
    monkeypatch.setenv("MODEL_ROUTES", json.dumps({"m": {"fallbacks": ["m"]}}))
    with pytest.raises(ConfigError, match="lists itself as a fallback"):
        load_settings()


@mock_aws
def test_secrets_come_from_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SECRETS_BACKEND=secretsmanager, secrets are read from the named JSON secret."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    boto3.client("secretsmanager").create_secret(
        Name="bradax/prod",
        SecretString=json.dumps(
            {"JWT_SECRET_KEY": SECRET, "OPENAI_API_KEY": "sk-from-aws", "UNRELATED": "ignored"}
        ),
    )
    settings = load_settings(secrets_backend="secretsmanager", secrets_name="bradax/prod")
    assert settings.jwt_secret_key is not None
    assert settings.jwt_secret_key.get_secret_value() == SECRET
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-aws"


@mock_aws
def test_secrets_come_from_parameter_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SECRETS_BACKEND=ssm, secrets are read from SecureString parameters under a path."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/bradax/JWT_SECRET_KEY", Value=SECRET, Type="SecureString")
    ssm.put_parameter(
        Name="/bradax/DATABASE_URL", Value="postgresql://u:p@db:5432/prod", Type="SecureString"
    )
    settings = load_settings(secrets_backend="ssm", secrets_name="/bradax")
    assert settings.database_url.get_secret_value() == "postgresql://u:p@db:5432/prod"
    assert settings.jwt_secret_key is not None
    assert settings.jwt_secret_key.get_secret_value() == SECRET


@mock_aws
def test_environment_wins_over_the_secrets_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicitly set environment variable overrides the same secret in the store."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    boto3.client("secretsmanager").create_secret(
        Name="bradax/prod", SecretString=json.dumps({"OPENAI_API_KEY": "sk-from-aws"})
    )
    settings = load_settings(secrets_backend="secretsmanager", secrets_name="bradax/prod")
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-env"


@mock_aws
def test_a_missing_secret_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret that cannot be read is a start-up error naming SECRETS_NAME, not a traceback."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ConfigError, match=r"^SECRETS_NAME: cannot read secretsmanager"):
        load_settings(secrets_backend="secretsmanager", secrets_name="nope")
