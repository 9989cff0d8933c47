"""Broker configuration: one frozen `Settings`, the only reader of environment variables.

Settings are built once per cold start (`get_settings()`); tests build `Settings(...)`
explicitly. A wrong value raises `ConfigError` with one line naming the variable.
Secrets may come from AWS Secrets Manager or SSM Parameter Store (`SECRETS_BACKEND`),
read through powertools Parameters; environment variables win over the store.
"""

from __future__ import annotations

import ipaddress
import json
import re
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

VERSION = "1.0.0"

# Names of the settings that may come from a secrets store.
SECRET_NAMES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET_KEY",
    "JWT_PRIVATE_KEY",
)


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


Provider = Literal["openai", "anthropic", "bedrock", "gemini"]


class ModelRoute(BaseModel):
    """Where one model alias is served: the provider's wire protocol, upstream URL, key,
    upstream name, prices (prompt-cache reads and writes included), fallbacks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # openai: any OpenAI-compatible server; anthropic: the Messages API; bedrock: the
    # Converse API (SigV4 from the AWS credential chain, or a Bedrock API key); gemini:
    # generateContent.
    provider: Provider = "openai"
    base_url: str | None = None
    api_key: SecretStr | None = None
    upstream_model: str | None = None
    input_per_1m: Decimal | None = Field(default=None, ge=0)
    output_per_1m: Decimal | None = Field(default=None, ge=0)
    cache_read_per_1m: Decimal | None = Field(default=None, ge=0)
    cache_write_per_1m: Decimal | None = Field(default=None, ge=0)
    # bedrock: the AWS region (default AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{2,32}$")
    fallbacks: tuple[str, ...] = ()
    # Azure OpenAI takes the key in an `api-key` header and an api-version query parameter.
    key_header: Literal["authorization", "api-key"] = "authorization"
    query: dict[str, str] = Field(default_factory=dict)


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***' (safe for logs and error bodies)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _SecretsStoreSource(PydanticBaseSettingsSource):
    """Reads secret settings from AWS Secrets Manager or SSM Parameter Store."""

    def __init__(self, settings_cls: type[BaseSettings], backend: str, name: str) -> None:
        super().__init__(settings_cls)
        self._backend = backend
        self._name = name

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        if self._backend == "env" or not self._name:
            return {}
        try:
            from aws_lambda_powertools.utilities import parameters
        except ImportError:
            raise ConfigError(
                f"SECRETS_BACKEND={self._backend} needs boto3 (pip install boto3)"
            ) from None

        values: dict[str, Any]
        try:
            if self._backend == "secretsmanager":
                raw = parameters.get_secret(self._name, transform="json", max_age=300)
                values = dict(raw) if isinstance(raw, dict) else {}
            else:
                found = parameters.get_parameters(self._name, decrypt=True, max_age=300)
                values = {key.rsplit("/", 1)[-1]: value for key, value in found.items()}
        except Exception as exc:  # any AWS/transport failure is a start-up config error
            raise ConfigError(
                f"SECRETS_NAME: cannot read {self._backend} secret {self._name!r}: "
                f"{type(exc).__name__}"
            ) from None
        return {k.lower(): v for k, v in values.items() if k.upper() in SECRET_NAMES}


class Settings(BaseSettings):
    """Every knob of the broker; environment variable names are the field names upper-cased."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Upstream (OpenAI or any OpenAI-compatible server)
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_timeout: float = Field(default=120.0, gt=0, le=3600)
    openai_max_retries: int = Field(default=3, ge=0, le=10)
    # Keys of native upstreams when a route names none (routes with provider anthropic/gemini)
    anthropic_api_key: SecretStr | None = None
    gemini_api_key: SecretStr | None = None
    # alias -> ModelRoute (JSON); prices override the built-in table
    model_routes: dict[str, ModelRoute] = Field(default_factory=dict)
    model_prices: dict[str, tuple[Decimal, Decimal]] = Field(default_factory=dict)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=30.0, gt=0)
    stream_idle_timeout: float | None = Field(default=None, gt=0)
    # What an upstream may send back: a whole non-streamed answer, one SSE event, a whole stream
    upstream_max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    upstream_max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    upstream_max_stream_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # PostgreSQL
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/bradax")
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    # asyncpg's prepared-statement cache per connection; 0 behind PgBouncer transaction pooling
    db_statement_cache_size: int = Field(default=100, ge=0, le=10_000)

    # Redis
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_timeout: float = Field(default=5.0, gt=0, le=300)
    # REDIS_URL names any node of a Redis Cluster; the clients find the others.
    redis_cluster: bool = False
    redis_cache_ttl: int = Field(default=300, ge=0)

    # Tokens
    jwt_secret_key: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_private_key: SecretStr | None = None
    jwt_key_id: str = "k1"
    jwt_verify_keys: dict[str, str] = Field(default_factory=dict)
    jwt_issuer: str = "bradax"
    jwt_audience: str = "bradax-broker"
    jwt_access_token_expire_minutes: int = Field(default=15, ge=1, le=24 * 60)
    jwt_refresh_token_expire_days: int = Field(default=7, ge=1, le=365)
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)

    # Server
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Slow or idle clients (`bradax serve`/`dev` and the function images): a request's head must
    # arrive within HEADER_TIMEOUT_SECONDS of its first byte (or of the connection), its body
    # within BODY_TIMEOUT_SECONDS after the head; idle keep-alive connections close after
    # KEEPALIVE_TIMEOUT_SECONDS; MAX_CONNECTIONS open connections at most (503 beyond).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    keepalive_timeout_seconds: int = Field(default=5, ge=1, le=3600)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_connections: int = Field(default=2048, ge=1)

    # Features
    rate_limiting_enabled: bool = True
    metrics_enabled: bool = True
    # if set, GET /prometheus requires `Authorization: Bearer <this token>`
    metrics_scrape_token: SecretStr | None = None
    audit_logging_enabled: bool = True

    # Governance
    rate_limit_ip_per_hour: int = Field(default=1000, ge=0)
    rate_limit_auth_per_minute: int = Field(default=30, ge=0)
    auth_failures_per_ip: int = Field(default=20, ge=1)
    auth_failures_per_project: int = Field(default=10, ge=1)
    auth_failure_window_seconds: int = Field(default=900, ge=1)
    # comma-separated CIDRs (or IPs) of the proxies allowed to set X-Forwarded-For
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    budget_soft_threshold: Decimal = Field(default=Decimal("0.8"), gt=0, le=1)
    reservation_timeout_seconds: float | None = Field(default=None, gt=0)
    policy_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # how long cached policy may be served while PostgreSQL cannot answer
    policy_stale_seconds: float = Field(default=300.0, ge=0, le=86_400)
    # Personal-data scans: past either budget a request or answer is refused (fail closed)
    pii_scan_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    pii_scan_max_chars: int = Field(default=16 * 1_048_576, ge=1024)
    pii_scan_workers: int = Field(default=1, ge=1, le=32)
    # binary attachments (images, audio, PDFs) cannot be read for personal data
    pii_binary_attachments: Literal["pass", "block"] = "pass"

    # Traces (OpenTelemetry, OTLP/HTTP): off unless an endpoint is set; the standard names
    otel_exporter_otlp_endpoint: str | None = None  # base URL; traces go to <it>/v1/traces
    otel_exporter_otlp_traces_endpoint: str | None = None  # full URL, wins over the base
    otel_service_name: str | None = None  # default: the function's name
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    otel_traces_sampler_arg: float | None = Field(default=None, ge=0, le=1)
    # spans waiting for export; past it they are dropped (and counted)
    otel_bsp_max_queue_size: int = Field(default=2048, ge=1, le=1_000_000)

    # Secrets store
    secrets_backend: Literal["env", "secretsmanager", "ssm"] = "env"
    secrets_name: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        store_cfg = {**env_settings(), **init_settings()}
        backend = str(store_cfg.get("secrets_backend", "env"))
        store = _SecretsStoreSource(settings_cls, backend, str(store_cfg.get("secrets_name", "")))
        return (init_settings, env_settings, store)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return tuple(value)

    @field_validator("model_prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        return {k: (Decimal(str(v[0])), Decimal(str(v[1]))) for k, v in value.items()}

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @field_validator("jwt_secret_key")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.jwt_algorithm != "HS256" and self.jwt_private_key is None:
            raise ValueError(f"JWT_PRIVATE_KEY is required with JWT_ALGORITHM={self.jwt_algorithm}")
        for alias, route in self.model_routes.items():
            for fallback in route.fallbacks:
                if fallback == alias:
                    raise ValueError(f"MODEL_ROUTES: {alias} lists itself as a fallback")
        return self

    @property
    def reservation_ttl(self) -> float:
        """Seconds after which an unsettled budget reservation is released."""
        if self.reservation_timeout_seconds is not None:
            return self.reservation_timeout_seconds
        return self.openai_timeout + 60.0

    @property
    def otlp_traces_endpoint(self) -> str | None:
        """Where spans are sent (None: tracing off), per the OTLP exporter's standard rules."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def stream_idle(self) -> float:
        """Longest silence tolerated between two chunks of a streamed answer."""
        return self.stream_idle_timeout or self.openai_timeout

    def require_jwt_secret(self) -> SecretStr:
        """The HS256 secret; raises ConfigError when tokens are needed but none is set."""
        if self.jwt_secret_key is None:
            raise ConfigError("JWT_SECRET_KEY: not set (at least 32 bytes are required)")
        return self.jwt_secret_key


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = error.get("loc") or ("settings",)
    name = str(loc[0]).upper()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if name == "SETTINGS" or not loc:
        return message
    return f"{name}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment (and overrides); raises ConfigError on a bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"a JSON setting is malformed: {exc.msg}") from None
    except SettingsError as exc:
        found = re.search(r'field "(\w+)"', str(exc))
        name = found[1].upper() if found else "settings"
        raise ConfigError(f"{name}: not valid JSON") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built on first use (one cold start, one read)."""
    return load_settings()


def clear_settings_cache() -> None:
    """Forget the cached Settings (tests, or `bradax dev` after it sets its env)."""
    get_settings.cache_clear()
