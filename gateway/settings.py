"""Gateway settings, read once at start-up from `GATEWAY_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where Kubernetes mounts the pod's service account, its namespace among it.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Settings(BaseSettings):
    """Everything an operator can tune. `Settings()` reads the environment; tests pass values."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the server binds.")
    port: int = Field(8080, ge=1, le=65535, description="Port the server listens on.")
    namespace: str | None = Field(
        None,
        description="The gateway's own namespace, where a bare model name is looked up; "
        "default: the service account's namespace, else `default`.",
    )
    namespaces: str | None = Field(
        None,
        description="Comma-separated namespaces whose ModelServices are routed, or * for every "
        "namespace; default: the gateway's own namespace.",
    )
    models_file: Path | None = Field(
        None,
        description="A static JSON list of models and endpoints (outside a cluster, tests, "
        "benchmarks); when set, nothing is read from Kubernetes and nothing is scaled.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys (a mounted Secret), one per line, optionally followed "
        "by the models that key may use; when unset no key is needed.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Request body size limit; larger is a 413."
    )
    max_in_flight_per_model: int = Field(
        256,
        ge=1,
        description="Requests in flight to one model at once; one more is answered 429 with "
        "Retry-After. Bounds what one busy model may hold of the gateway.",
    )
    request_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a backend may take to answer a request; past it the answer is 504.",
    )
    connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a connection to a pod before trying another."
    )
    scale_from_zero_timeout: float = Field(
        300.0,
        ge=0,
        description="Seconds a request is held waiting for a ready replica (a model scaling up "
        "from zero, or pods starting); past it the answer is 503 with Retry-After.",
    )
    retry_after: int = Field(
        1, ge=1, description="Seconds in the Retry-After header of a 429, and of a model's "
        "429 or 503 that gave none, on the routes that translate its answer."
    )
    log_level: str = Field("info", description="Log level.")

    @field_validator("namespace", "namespaces", "models_file", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return value or None

    @property
    def home_namespace(self) -> str:
        """Where a bare model name is looked up: GATEWAY_NAMESPACE, else the pod's own."""
        if self.namespace:
            return self.namespace
        if SERVICE_ACCOUNT_NAMESPACE.exists():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return "default"

    @property
    def served_namespaces(self) -> list[str]:
        """The namespaces whose ModelServices are routed."""
        if self.namespaces:
            return [ns.strip() for ns in self.namespaces.split(",") if ns.strip()]
        return [self.home_namespace]
