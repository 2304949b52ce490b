"""`python -m reranker` / `reranker`: serve the API with uvicorn, settings from RERANKER_*."""

from __future__ import annotations

import logging
import sys

from .memory import keep_freed_memory
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in {"-h", "--help"}:
        print(
            "usage: reranker\n\nServes the Qwen3 reranker API. Configure with RERANKER_* "
            "environment variables:\n"
        )
        for name, field in Settings.model_fields.items():
            print(f"  RERANKER_{name.upper():<20} {field.description} (default: {field.default!r})")
        return 0
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Before torch is imported: the allocator's arena limit is fixed by the first thread.
    if settings.keep_freed_memory and not keep_freed_memory():
        logging.getLogger("reranker").info("not glibc: RERANKER_KEEP_FREED_MEMORY has no effect")
    from .app import create_app
    from .server import build_server

    build_server(create_app(settings), settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
