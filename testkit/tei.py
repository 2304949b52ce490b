"""The TEI stand-in, for the gateway's tests, benchmark and demo.

`tei_app(kind=...)` is an aiohttp server that implements exactly the request
and response schema of TEI's published OpenAPI document, text-embeddings-inference tag v1.9.3,
`docs/openapi.json` (the release the chart pins), for the routes the gateway uses:
`POST /embed` (EmbedRequest -> EmbedResponse), `POST /v1/embeddings` (OpenAICompatRequest ->
OpenAICompatResponse, `encoding_format` float or base64), `POST /rerank` (RerankRequest ->
RerankResponse, ranks sorted by descending score as TEI's router sorts them), `GET /health`,
`GET /info` (Info); errors as ErrorResponse `{error, error_type}` (OpenAICompatErrorResponse
`{message, code, type}` on /v1/embeddings) with the statuses the real router (1.9.3, built by
`make tei`) answers: 400 empty batch, 422 batch over `max_client_batch_size` (the OpenAPI
document says 413), 424 wrong model type; a body that is not the route's schema is axum's
rejection in plain text, 422 (400 when it is not JSON at all). tests/service/test_tei_stand_in.py
checks these against the real router on shared cases. Its outputs are
deterministic: an embedding is a sum of per-word vectors seeded by the word's hash; a rerank
score is the number of query words in the text minus one, through a sigmoid unless
`raw_scores`. TEI's images cannot be pulled on these machines; this is what the gateway's TEI
paths are tested against.

`start_tei_process` runs it in a process of its own (testkit/processes.py):
`python -m testkit.tei --port N [--kind embedding|reranker] [--delay S]`.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .processes import BackendProcess, free_port, start_process

TEI_VERSION = "1.9.3"
TEI_OPENAPI = "text-embeddings-inference v1.9.3, docs/openapi.json"


# --- the TEI stand-in ----------------------------------------------------------------------------


@dataclass
class TeiBehaviour:
    """What the stand-in serves and how: its model type, a delay before each answer, a status
    to answer every scoring request with instead (e.g. 503), and the requests it received
    (unless `record` is off: the stand-in in a process of its own keeps none, since nobody can
    read them there and a list of every request of a benchmark, thousands a second, slows the
    process's garbage collections as it grows)."""

    kind: str = "embedding"  # "embedding" | "reranker"
    model_id: str = "tei-stand-in"
    dimensions: int = 16
    max_client_batch_size: int = 32
    delay: float = 0.0
    fail_status: int | None = None
    received: list[tuple[str, Any]] = field(default_factory=list)
    record: bool = True


class _TeiError(Exception):
    def __init__(self, status: int, message: str, error_type: str):
        self.status, self.message, self.error_type = status, message, error_type


class _Rejection(_TeiError):
    """axum's rejection of a body its Json extractor cannot read: plain text, as TEI sends it."""

    def __init__(self, detail: str, status: int = 422):
        prefix = ("Failed to parse the request body as JSON" if status == 400
                  else "Failed to deserialize the JSON body into the target type")
        super().__init__(status, f"{prefix}: {detail}", "")


def _words(text: str) -> list[str]:
    return text.lower().split()


def _tokens(text: str) -> int:
    return len(_words(text)) + 2  # [CLS] ... [SEP]


def _embedding(text: str | list[int], dimensions: int, normalize: bool) -> list[float]:
    pieces = [str(t) for t in text] if isinstance(text, list) else _words(text)
    vector = [0.0] * dimensions
    for piece in pieces or [""]:
        digest = hashlib.blake2b(piece.encode(), digest_size=dimensions).digest()
        for i, byte in enumerate(digest):
            vector[i] += byte / 127.5 - 1.0
    if normalize:
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    # TEI answers f32: round-trip through it so floats match a real f32 answer.
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *vector)))


def tei_rerank_score(query: str, text: str, raw_scores: bool = False) -> float:
    """The stand-in's score of one (query, text) pair, as TEI's f32."""
    raw = float(len(set(_words(query)) & set(_words(text)))) - 1.0
    value = raw if raw_scores else 1.0 / (1.0 + math.exp(-raw))
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _inputs(value: Any) -> list[str | list[int]]:
    """TEI's `Input`: an InputType (string, or array of token ids) or an array of them."""
    def is_ids(v):
        return isinstance(v, list) and all(isinstance(t, int) and t >= 0 for t in v)

    if isinstance(value, str) or (is_ids(value) and value):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) or is_ids(v) for v in value):
        return list(value)
    raise _Rejection("inputs: data did not match any variant of untagged enum Input")


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Rejection(f"{name}: invalid type, expected a boolean")
    return value


def tei_app(behaviour: TeiBehaviour | None = None, **kwargs) -> web.Application:
    """The TEI stand-in, serving `behaviour` (or a TeiBehaviour(**kwargs))."""
    b = behaviour or TeiBehaviour(**kwargs)
    app = web.Application()

    async def body_of(request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise _Rejection("not valid JSON", 400) from None
        if not isinstance(body, dict):
            raise _Rejection("invalid type, expected a JSON object")
        if b.record:
            b.received.append((request.path, body))
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.fail_status is not None:
            raise _TeiError(b.fail_status, "Model is overloaded" if b.fail_status == 429
                            else "unhealthy", "Unhealthy")
        return body

    def check_batch(items: list, field: str) -> None:
        if not items:
            prefix = "" if field == "texts" else "Input validation error: "
            raise _TeiError(400, f"{prefix}`{field}` cannot be empty", "Empty")
        if len(items) > b.max_client_batch_size:
            raise _TeiError(422, f"batch size {len(items)} > maximum allowed batch size "
                            f"{b.max_client_batch_size}", "Validation")

    def check_kind(kind: str) -> None:
        if b.kind != kind:
            what = "a re-ranker" if kind == "reranker" else "an embedding"
            raise _TeiError(424, f"model is not {what} model", "Backend")

    def answer(payload: Any, tokens: int) -> web.Response:
        return web.json_response(payload, headers={"x-compute-tokens": str(tokens)})

    def tei_errors(openai: bool):
        def wrap(handler):
            async def wrapped(request):
                try:
                    return await handler(request)
                except _Rejection as e:
                    return web.Response(text=e.message, status=e.status)
                except _TeiError as e:
                    if openai:
                        body = {"message": e.message, "code": e.status, "type": e.error_type}
                    else:
                        body = {"error": e.message, "error_type": e.error_type}
                    return web.json_response(body, status=e.status)
            return wrapped
        return wrap

    @tei_errors(openai=False)
    async def embed(request):
        body = await body_of(request)
        check_kind("embedding")
        if "inputs" not in body:
            raise _Rejection("missing field `inputs`")
        inputs = _inputs(body["inputs"])
        check_batch(inputs, "inputs")
        normalize = _boolean(body, "normalize", True)
        vectors = [_embedding(text, b.dimensions, normalize) for text in inputs]
        return answer(vectors, sum(_tokens(t) if isinstance(t, str) else len(t) for t in inputs))

    @tei_errors(openai=True)
    async def openai_embed(request):
        body = await body_of(request)
        check_kind("embedding")
        if "input" not in body:
            raise _Rejection("missing field `input`")
        inputs = _inputs(body["input"])
        check_batch(inputs, "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _Rejection("encoding_format: unknown variant, expected `float` or `base64`")
        data = []
        for index, text in enumerate(inputs):
            vector = _embedding(text, b.dimensions, True)
            embedding: Any = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        tokens = sum(_tokens(t) if isinstance(t, str) else len(t) for t in inputs)
        return answer({"object": "list", "data": data, "model": b.model_id,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tokens)

    @tei_errors(openai=False)
    async def rerank(request):
        body = await body_of(request)
        check_kind("reranker")
        query, texts = body.get("query"), body.get("texts")
        if not isinstance(query, str):
            raise _Rejection("missing field `query`" if query is None
                             else "query: invalid type, expected a string")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _Rejection("missing field `texts`" if texts is None
                             else "texts: invalid type, expected a sequence of strings")
        check_batch(texts, "texts")
        raw_scores = _boolean(body, "raw_scores", False)
        return_text = _boolean(body, "return_text", False)
        _boolean(body, "truncate", False)
        if body.get("truncation_direction", "Right") not in ("Left", "Right"):
            raise _Rejection("truncation_direction: unknown variant, expected `Left` or `Right`")
        ranks = []
        for index, text in enumerate(texts):
            rank: dict[str, Any] = {"index": index}
            if return_text:
                rank["text"] = text
            rank["score"] = tei_rerank_score(query, text, raw_scores)
            ranks.append(rank)
        # TEI's router: sort ascending by score, then reverse (ties end in reverse position).
        ranks.sort(key=lambda r: r["score"])
        ranks.reverse()
        return answer(ranks, sum(_tokens(query) + _tokens(t) for t in texts))

    async def health(request):
        return web.Response(status=200)

    async def info(request):
        model_type = (
            {"embedding": {"pooling": "mean"}} if b.kind == "embedding"
            else {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        )
        return web.json_response({
            "model_id": b.model_id, "model_sha": None, "model_dtype": "float32",
            "model_type": model_type, "served_model_name": b.model_id,
            "max_concurrent_requests": 512, "max_input_length": 512,
            "max_batch_tokens": 16384, "max_batch_requests": None,
            "max_client_batch_size": b.max_client_batch_size, "auto_truncate": False,
            "tokenization_workers": 1, "version": TEI_VERSION, "sha": None,
            "docker_label": None,
        })

    app.router.add_post("/embed", embed)
    app.router.add_post("/v1/embeddings", openai_embed)
    app.router.add_post("/rerank", rerank)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    return app


def start_tei_process(kind: str = "embedding", *, port: int | None = None,
                      log: Path | None = None) -> BackendProcess:
    """The TEI stand-in in a process of its own (the benchmark's fast backend)."""
    port = port or free_port()
    return start_process("testkit.tei", {}, port, args=("--port", str(port), "--kind", kind),
                         log=log, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the TEI stand-in on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("embedding", "reranker"), default="embedding")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(tei_app(kind=args.kind, delay=args.delay, record=False), host="127.0.0.1",
                port=args.port,
                access_log=None, print=None, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
