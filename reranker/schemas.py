"""Request and response bodies: Cohere's rerank v1 and v2 shapes, plus health and info.

The fields carry descriptions, limits and examples, so /docs documents the API. Unknown fields
are ignored rather than refused, so newer Cohere clients that send more options keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EXAMPLE_QUERY = "What is the capital of France?"
EXAMPLE_DOCUMENTS = [
    "Paris is the capital of France.",
    "Berlin is in Germany.",
    "The Eiffel Tower is in Paris.",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _RerankCommon(_Body):
    model: str | None = Field(
        None,
        description="Accepted for Cohere compatibility; the service always uses its loaded model.",
        examples=["Qwen/Qwen3-Reranker-0.6B"],
    )
    query: str = Field(..., description="The search query.", examples=[EXAMPLE_QUERY])
    top_n: int | None = Field(
        None, ge=1, description="Return only the n best documents (default: all).", examples=[2]
    )
    max_tokens_per_doc: int | None = Field(
        None,
        ge=1,
        description="Cut each document to this many tokens (it is also cut to fit max_length).",
    )
    instruction: str | None = Field(
        None,
        description="Task instruction of the Qwen3-Reranker prompt; default: the server's. "
        "A cross-encoder takes none (422).",
        examples=["Given a web search query, retrieve relevant passages that answer the query"],
    )
    raw_scores: bool = Field(
        False,
        description="Return the raw score (logit(yes) - logit(no) for Qwen3-Reranker, the logit "
        "for a cross-encoder) instead of its sigmoid in [0, 1].",
    )


class RerankRequestV1(_RerankCommon):
    """Cohere rerank v1, plus `texts` (the same as `documents`, as in TEI) and the options above."""

    documents: list[str | dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="Documents to rank: strings, or objects with a `text` field "
        "(or the fields named by `rank_fields`). Give this or `texts`, not both.",
        examples=[EXAMPLE_DOCUMENTS],
    )
    texts: list[str | dict[str, Any]] | None = Field(
        None, min_length=1, description="Another name for `documents`.", examples=[None]
    )
    return_documents: bool = Field(
        True, description="Echo each ranked document back in the result."
    )
    rank_fields: list[str] | None = Field(
        None,
        description="For object documents: the fields ranked on, as `field: value` lines "
        "(default: `text`).",
    )

    @model_validator(mode="after")
    def _one_document_list(self) -> "RerankRequestV1":
        if self.documents is None and self.texts is None:
            raise ValueError("give the documents to rank in `documents` (or `texts`)")
        if self.documents is not None and self.texts is not None:
            raise ValueError("give either `documents` or `texts`, not both")
        return self

    def items(self) -> list[str | dict[str, Any]]:
        return self.documents if self.documents is not None else self.texts  # type: ignore[return-value]


class RerankRequestV2(_RerankCommon):
    """Cohere rerank v2: documents are strings."""

    documents: list[str] = Field(
        ..., min_length=1, description="Documents to rank.", examples=[EXAMPLE_DOCUMENTS]
    )
    return_documents: bool = Field(
        False, description="Echo each ranked document back (not part of Cohere v2; off by default)."
    )

    def items(self) -> list[str]:
        return self.documents


class RankedDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(..., description="Position of the document in the request.")
    relevance_score: float = Field(
        ...,
        description="In [0, 1]: P(yes) for Qwen3-Reranker, the sigmoid of the logit for a "
        "cross-encoder. With raw_scores: logit(yes) - logit(no), or the logit.",
    )
    document: dict[str, Any] | None = Field(
        None, description="The document, when return_documents is true."
    )


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class Tokens(BaseModel):
    input_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class RerankResponse(BaseModel):
    id: str = Field(..., examples=["rerank-5f1c0d3a9b8e4c2d"])
    results: list[RerankResult] = Field(..., description="Best first, cut to top_n.")
    meta: Meta


class Health(BaseModel):
    status: Literal["ok", "loading", "failed", "stopping"]
    model: str
    device: str
    message: str | None = None


class Limits(BaseModel):
    max_documents: int
    max_body_bytes: int
    max_queue: int
    batch_tokens: int
    batch_requests: bool = Field(..., description="Documents of concurrent requests share passes.")
    request_timeout: float = Field(..., description="Seconds a request may take (504 past it).")


class Info(BaseModel):
    model: str
    max_length: int
    dtype: str
    device: str
    architecture: str = Field(
        ..., description="qwen3-reranker or cross-encoder, from the model's config.json."
    )
    instruction: str = Field(..., description="Default instruction (Qwen3-Reranker only).")
    limits: Limits
    version: str


class ErrorBody(BaseModel):
    message: str = Field(..., description="What was wrong, naming the field.")
    type: str = Field(..., description="Error kind: invalid_request, payload_too_large, ...")


def document_text(item: str | dict[str, Any], index: int, rank_fields: list[str] | None) -> str:
    """The text scored for one document: a string as is; an object's `text`, or its `rank_fields`
    as `field: value` lines in that order. The reranker service and the gateway (which translates
    Cohere requests for TEI) both score documents by it. Raises ValueError naming the document."""
    if isinstance(item, str):
        return item
    fields = rank_fields or ["text"]
    missing = [f for f in fields if f not in item]
    if missing:
        raise ValueError(f"documents[{index}]: object has no `{missing[0]}` field")
    values = [item[f] for f in fields]
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"documents[{index}]: `{fields[0]}` must be a string")
    if rank_fields:
        return "\n".join(f"{f}: {v}" for f, v in zip(fields, values))
    return values[0]
