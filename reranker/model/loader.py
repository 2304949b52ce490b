"""Loading a model: the device, the dtype, and which scorer serves it, read from its
config.json; `TransformersEngine` is the `Engine` the service runs."""

from __future__ import annotations

import logging
import os
import pwd
import stat
import threading
from dataclasses import replace
from pathlib import Path

import torch

from ..engine import EngineInfo, PromptCacheStats, Scores
from ..planning import Prepared, score_alone
from ..settings import Settings
from .cross_encoder import CrossEncoder
from .qwen3 import Qwen3Reranker

log = logging.getLogger("reranker.model.loader")

QWEN3_RERANKER = "qwen3-reranker"
CROSS_ENCODER = "cross-encoder"


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def memory_fraction(limit_mib: int, total_bytes: int) -> float:
    """The fraction of a device's memory that is `limit_mib` (at most the whole device)."""
    return min(1.0, limit_mib * 1024 * 1024 / total_bytes)


class UnsupportedModel(ValueError):
    """The model's config.json names an architecture this service cannot score with."""


def choose_backend(config) -> str:
    """Which scorer fits a model, from its config.json: `architectures` and `num_labels`.

    Qwen3ForCausalLM is a Qwen3-Reranker (the yes/no prompt); any *ForSequenceClassification
    with a single label is a classic cross-encoder (bge-reranker-v2-m3, ms-marco MiniLM, ...).
    Anything else is refused with the reason, rather than scored with the wrong recipe.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if "Qwen3ForCausalLM" in architectures:
        return QWEN3_RERANKER
    classifiers = [a for a in architectures if a.endswith("ForSequenceClassification")]
    if classifiers:
        if config.num_labels != 1:
            raise UnsupportedModel(
                f"{classifiers[0]} has num_labels={config.num_labels}; a cross-encoder reranker "
                "has a single relevance logit (num_labels=1)"
            )
        return CROSS_ENCODER
    named = ", ".join(architectures) or f"none (model_type={getattr(config, 'model_type', None)})"
    raise UnsupportedModel(
        f"unsupported architecture: {named}. Supported: Qwen3ForCausalLM (Qwen3-Reranker) and "
        "*ForSequenceClassification with num_labels=1 (cross-encoders such as "
        "BAAI/bge-reranker-v2-m3 or cross-encoder/ms-marco-MiniLM-L-6-v2)"
    )


class ModelNotReadable(PermissionError):
    """A local model directory holds files or directories the service's user cannot read."""


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_readable(model: str) -> None:
    """Refuse a local model directory the service's user cannot read, saying which files and
    which user.

    transformers reports an unreadable weights file as "No such file or directory" (it looks for
    the file, then for other weight formats), which sends the reader after a missing file; the
    common cause is weights saved by root with mode 600 and served by a non-root image. A Hub id
    (no such directory) is left to transformers.
    """
    root = Path(model)
    if not root.is_dir():
        return
    blocked: list[str] = []
    for directory, dirnames, filenames in os.walk(root, onerror=lambda err: blocked.append(err.filename)):
        for name in dirnames:
            path = Path(directory, name)
            if not os.access(path, os.R_OK | os.X_OK):
                blocked.append(str(path))
        for name in filenames:
            path = Path(directory, name)
            if not os.access(path, os.R_OK):
                blocked.append(str(path))
    if not blocked:
        return
    shown = []
    for name in sorted(set(blocked))[:5]:
        try:
            st = os.stat(name)
            shown.append(f"{Path(name).relative_to(root)} (mode {stat.S_IMODE(st.st_mode):04o}, "
                         f"owner uid {st.st_uid}, gid {st.st_gid})")
        except OSError:
            shown.append(str(Path(name).relative_to(root)))
    more = f" and {len(set(blocked)) - 5} more" if len(set(blocked)) > 5 else ""
    raise ModelNotReadable(
        f"model directory {model}: the service runs as {_who(os.getuid())}, gid {os.getgid()}, "
        f"and cannot read {', '.join(shown)}{more}. Make the files readable by that user "
        f"(chmod -R a+rX {model}, or own them by its uid/gid; in Kubernetes, the pod's runAsUser, "
        "runAsGroup or fsGroup)"
    )


class TransformersEngine:
    """Loads the model with transformers; the scorer is chosen from the model's config.json."""

    def __init__(self, settings: Settings):
        self.settings = settings
        device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, device)
        self.info = EngineInfo(
            model=settings.model_name,
            device=device,
            dtype=str(self.dtype).removeprefix("torch."),
            max_length=settings.max_length,
        )
        self._tokenize = threading.Lock()
        self.backend: Qwen3Reranker | CrossEncoder | None = None

    def start(self) -> None:
        from transformers import AutoConfig

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        if self.info.device == "cuda" and self.settings.gpu_memory_mib:
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = memory_fraction(self.settings.gpu_memory_mib, total)
            torch.cuda.set_per_process_memory_fraction(fraction)
            log.info("GPU memory capped at %d MiB (%.3f of the device)", self.settings.gpu_memory_mib, fraction)
        check_readable(self.settings.model)
        config = AutoConfig.from_pretrained(self.settings.model)
        kind = choose_backend(config)
        log.info(
            "loading %s (%s) on %s (%s)",
            self.settings.model,
            kind,
            self.info.device,
            self.info.dtype,
        )
        if kind == QWEN3_RERANKER:
            backend = Qwen3Reranker(self.settings, self.info.device, self.dtype)
        else:
            backend = CrossEncoder(self.settings, self.info.device, self.dtype, config)
        self.backend = backend
        self.info = replace(self.info, max_length=backend.max_length, architecture=kind)
        log.info("model ready")

    def prompt_cache(self) -> PromptCacheStats | None:
        """The prompt-head cache's counters, for /metrics; None without one (cross-encoders)."""
        backend = self.backend
        if not isinstance(backend, Qwen3Reranker):
            return None
        packed = backend.packed
        return PromptCacheStats(packed.cache_hits, packed.cache_misses, packed.cached_rows)

    def stop(self) -> None:
        self.backend = None
        if self.info.device == "cuda":
            torch.cuda.empty_cache()

    def _started(self) -> Qwen3Reranker | CrossEncoder:
        if self.backend is None:
            raise RuntimeError("engine not started")
        return self.backend

    def prepare(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Prepared:
        """Tokenize one request; safe to call from request threads while `forward` runs."""
        backend = self._started()
        with self._tokenize:
            return backend.prepare(query, documents, instruction, max_tokens_per_doc)

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]:
        """One pass: raw scores for the given units of each prepared request. One caller."""
        backend = self._started()
        with torch.inference_mode():
            return backend.forward(parts)

    def score(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Scores:
        """One request on its own, in passes under the token budget (no scheduler)."""
        prepared = self.prepare(query, documents, instruction, max_tokens_per_doc)
        logits = score_alone(self, prepared, self.settings.batch_tokens)
        return Scores(logits=logits, tokens=prepared.tokens)
