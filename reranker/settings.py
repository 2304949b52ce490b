"""Service settings, read once at start-up from `RERANKER_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class Settings(BaseSettings):
    """Everything an operator can tune. `Settings()` reads the environment; tests pass values."""

    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id or local directory (works offline with HF_HUB_OFFLINE=1).",
    )
    served_model_name: str | None = Field(
        None, description="Name reported by /health and /info; defaults to `model`."
    )
    host: str = Field("127.0.0.1", description="Address uvicorn binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn listens on.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when a GPU is visible, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on CUDA (fp16 without bf16 support), fp32 on CPU."
    )
    max_length: int = Field(
        8192,
        ge=64,
        description="Tokens per (prompt + document) pair; longer documents are truncated.",
    )
    batch_tokens: int = Field(
        8192,
        ge=256,
        description="Token budget of one forward pass: documents of one or more requests, and "
        "their shared prompt, are packed under it. It bounds the memory scoring needs.",
    )
    prompt_cache_tokens: int = Field(
        512,
        ge=0,
        description="Tokens of prompt heads (system prompt + instruction, the same for every "
        "request with that instruction) whose keys and values are kept between passes, least "
        "recently used out; 0 computes each once per pass instead.",
    )
    max_documents: int = Field(1000, ge=1, description="Documents per request; more is a 413.")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Request body size limit; larger is a 413."
    )
    body_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes of request bodies held at once (being read, parsed, queued or "
        "scored; a body without Content-Length counts as RERANKER_MAX_BODY_BYTES); a request "
        "that would pass it is answered 429 with Retry-After before its body is read. At least "
        "RERANKER_MAX_BODY_BYTES.",
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="Requests queued or being scored at once; one more is answered 429 with "
        "Retry-After.",
    )
    batch_requests: bool = Field(
        True,
        description="Batch documents of concurrent requests into the same forward passes; "
        "false scores one request at a time (the load benchmark's baseline).",
    )
    request_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a request may take, queueing included; past it the answer is 504.",
    )
    shutdown_delay: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, seconds to go on serving while /health answers 503 `stopping`, "
        "so that readiness fails and the endpoint is removed before the port closes.",
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="Then, seconds the requests in flight have to finish; past it, those still "
        "running are answered 503 `not_ready`.",
    )
    keep_alive_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds an idle connection is kept open between requests.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a request's headers (from connecting, or "
        "from the request's first byte); past it, the connection is closed.",
    )
    body_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a request has to send its whole body once its headers are in; "
        "past it, the answer is 408.",
    )
    instruction: str = Field(
        DEFAULT_INSTRUCTION, description="Instruction used when a request gives none."
    )
    api_key: str | None = Field(
        None, description="When set, every request but /health needs `Authorization: Bearer <key>`."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; default: all cores torch sees."
    )
    keep_freed_memory: bool = Field(
        True,
        description="Keep memory a forward pass frees for the next one instead of returning it "
        "to the OS (glibc): spares CPU passes the page faults that cost them about a quarter of "
        "their time; the RSS then stays near its high-water mark between passes.",
    )
    gpu_memory_mib: int | None = Field(
        None,
        ge=1,
        description="On CUDA: the most device memory (MiB) torch's allocator may hold, set with "
        "torch.cuda.set_per_process_memory_fraction; a pass that would need more fails with CUDA "
        "out-of-memory instead of taking memory from the GPU's other tenants. The CUDA context "
        "is outside it. The operator sets it from the pod's GPU share; unset: no cap.",
    )
    log_level: str = Field("info", description="uvicorn log level.")

    @model_validator(mode="after")
    def _one_body_fits(self) -> "Settings":
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "RERANKER_BODY_BYTES_IN_FLIGHT must be at least RERANKER_MAX_BODY_BYTES "
                f"({self.max_body_bytes}), or no body of the largest size would ever be read"
            )
        return self

    @field_validator("api_key", "served_model_name")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model
