"""Download a Hugging Face model snapshot into an image at build time.

Used by the builder stages of images/embedding/Dockerfile and images/reranker/Dockerfile, so
pods start from the weights baked into the image instead of downloading them:

    python fetch_model.py MODEL_ID REVISION DEST [--ignore PATTERN ...]

An empty MODEL_ID creates an empty DEST and downloads nothing (the reranker image without a
baked model). The token for gated models comes from the HF_TOKEN variable, which the
Dockerfiles fill from a BuildKit secret, never from a build argument (build arguments are
recorded in the image history).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from huggingface_hub import snapshot_download


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_id", help="Hugging Face repository id; empty: bake no model")
    parser.add_argument("revision", help="branch, tag or commit of the model repository")
    parser.add_argument("dest", type=Path, help="directory that receives the snapshot")
    parser.add_argument(
        "--ignore", nargs="*", default=[], help="glob patterns of repository files to leave out"
    )
    args = parser.parse_args(argv)

    args.dest.mkdir(parents=True, exist_ok=True)
    if not args.model_id:
        print("fetch_model: no MODEL_ID, baking no model", file=sys.stderr)
        return 0

    path = snapshot_download(
        repo_id=args.model_id,
        revision=args.revision or None,
        local_dir=args.dest,
        ignore_patterns=[p for p in args.ignore if p] or None,
        token=os.environ.get("HF_TOKEN") or None,
    )
    # The download bookkeeping is of no use at run time and would only grow the image.
    cache = Path(path) / ".cache"
    if cache.is_dir():
        shutil.rmtree(cache)
    print(f"fetch_model: {args.model_id}@{args.revision or 'default'} -> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
