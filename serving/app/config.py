"""Settings, read from SERVING_* environment variables (MLflow and boto3 read their own)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that mean "nobody set this": fine on a laptop, refused anywhere else.
PLACEHOLDER_TOKENS = frozenset({"", "change-me", "changeme", "placeholder", "secret", "token", "reload"})
MIN_PRODUCTION_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of the server; the environment names are SERVING_<FIELD> (upper case)."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore", protected_namespaces=())

    environment: Literal["development", "production"] = "development"
    model_name: str = Field(default="iris_classifier", min_length=1)
    model_alias: str = Field(default="champion", min_length=1)
    # Overrides name/alias: models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/STAGE
    # (deprecated by MLflow, still accepted) or any URI mlflow.pyfunc.load_model accepts (loaded once).
    model_uri: str | None = None
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    reload_token: SecretStr = SecretStr("change-me")
    # How long POST /reload waits for the check it triggers before answering 202.
    reload_wait_seconds: float = Field(default=60.0, gt=0)
    # Requests carrying more rows than this get 413.
    max_batch_rows: int = Field(default=1000, ge=1)
    # Requests whose declared body is larger get 413 before the body is parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Micro-batching of concurrent requests into one predict call.
    batching_enabled: bool = True
    batch_max_rows: int = Field(default=512, ge=1)
    batch_max_wait_ms: float = Field(default=0.0, ge=0)
    # MLflow registry webhooks (POST /webhooks/mlflow): the HMAC secret the webhook was created
    # with; unset, the endpoint answers 404. Deliveries older than the max age are refused.
    webhook_secret: SecretStr | None = None
    webhook_max_age_seconds: float = Field(default=300.0, gt=0)
    # Peers told about webhooks and reloads (serving/app/cluster.py): a headless Service name
    # resolved to every ready pod, on peer_port, and/or comma-separated base URLs.
    peers_dns: str | None = None
    peer_port: int = Field(default=8000, ge=1, le=65535)
    peer_urls: str = ""
    peer_timeout_seconds: float = Field(default=5.0, gt=0)
    # A file whose appearance starts the drain (serving/app/drain.py): the chart's preStop hook
    # creates it; unset, the server never drains.
    drain_file: str | None = None
    # Directory shared by the workers of one replica (uvicorn --workers N); unset: one worker.
    workers_dir: str | None = None
    # Client-side limits for registry calls, applied unless MLFLOW_HTTP_REQUEST_* are set:
    # MLflow's own defaults (120 s timeout, 7 retries) would stall a check for minutes.
    registry_timeout_seconds: int = Field(default=10, ge=1)
    registry_max_retries: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment != "development":
            token = self.reload_token.get_secret_value()
            if token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < MIN_PRODUCTION_TOKEN_LENGTH:
                raise ValueError(
                    "SERVING_RELOAD_TOKEN is a placeholder or shorter than "
                    f"{MIN_PRODUCTION_TOKEN_LENGTH} characters; set a real token outside development"
                )
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret is not None else None
            if secret is not None and (
                secret.strip().lower() in PLACEHOLDER_TOKENS or len(secret) < MIN_PRODUCTION_TOKEN_LENGTH
            ):
                raise ValueError(
                    "SERVING_WEBHOOK_SECRET is a placeholder or shorter than "
                    f"{MIN_PRODUCTION_TOKEN_LENGTH} characters; set a real secret outside development"
                )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
