"""The ModelCache download Job: fetch one model revision from the Hub onto a volume, once.

    python -m modelservice.cache.download --model ORG/NAME [--revision REV] [--dir /models]
                                    [--termination-log /dev/termination-log] [--wait]

With --wait it fetches nothing: it waits until the revision is complete on the volume (its link,
below, exists) and exits 0. The chart-only pods run it as their init container, so that they start
only once their download Job has filled the volume (the operator gates its pods itself).

Env: HF_TOKEN (optional; the Secret named by the ModelCache's spec.hfTokenSecretRef),
HF_ENDPOINT (optional; another Hub endpoint, e.g. the test suite's stand-in).

Layout on the volume (`--dir`, mounted at /models in the pods):

    hub/models--org--name/{blobs,snapshots/<commit>,refs}   the Hugging Face hub cache; blobs are
                                                            shared between revisions
    models/org--name/<revision>  ->  ../../hub/models--org--name/snapshots/<commit>

`model_path(model, revision)` names that stable link (relative to the volume root); the operator
points pods at /models/<model_path>. The link is replaced atomically, and only once every file
of the revision is complete, so a pod never sees a half-filled revision.

Only the files the engines need are fetched (`select_files`): configs, tokenizer files,
sentence-transformers modules, and one weight format (safetensors where the repository has it,
else PyTorch .bin); never ONNX, OpenVINO, TensorFlow, Flax, Rust, GGUF or Core ML copies.

The HTTP, the cache layout and the blob sharing are huggingface_hub's (`model_info`,
`get_hf_file_metadata`, `http_get`, `hf_hub_download`). One thing is added: huggingface_hub 2.x
downloads into a process-unique temporary file and deletes it when the download fails (it resumes
with a Range request only within the same process), so a Job retried after a cut would fetch the
whole file again. Here each missing blob is first filled into `blobs/<etag>.incomplete`, which
survives the process, through the library's `http_get` with `resume_size` (a Range request for
the rest); when it is complete (size and, for LFS files, sha256 checked) it is moved to
`blobs/<etag>` and `hf_hub_download` links it into the snapshot without downloading it again.

A revision given as a 40-hex commit that is already complete on the volume needs no network at
all; a branch or tag costs one metadata request (`GET /api/models/ORG/NAME/revision/REV`) when
nothing changed.

Result: the termination log gets `{"commit", "bytes", "files", "path"}` and the process exits 0;
on failure `{"reason", "message"}` and exit 2 when retrying cannot help (Unauthorized,
RepositoryNotFound, RevisionNotFound, EntryNotFound, InsufficientStorage), exit 1 when it can
(NetworkError, ServerError; the files already fetched are kept).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

log = logging.getLogger("modelservice.cache.download")

COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096
PROGRESS_INTERVAL = 5.0
# Marks a revision complete on the volume: models/org--name/.complete/<commit>.json
COMPLETE_DIR = ".complete"


# --- paths --------------------------------------------------------------------------------------


def _split_model(model: str) -> tuple[str, str]:
    org, sep, name = model.partition("/")
    if not sep or not org or not name or "/" in name or {org, name} & {".", ".."}:
        raise ValueError(f"model {model!r}: expected ORG/NAME")
    return org, name


def model_path(model: str, revision: str) -> str:
    """Where a revision of a model lives on the volume, relative to its root:
    `models/<org>--<name>/<revision with every '/' replaced by '--'>`.

    `refs/pr/1` and `refs--pr--1` name the same path; the Hub does not allow '--' in branch names
    next to a '/' in a way that would make two real revisions of one repository collide in
    practice, and the link always records the commit it points to."""
    org, name = _split_model(model)
    flat = revision.replace("/", "--")
    if not revision or flat in (".", "..") or "\\" in flat or "\0" in flat:
        raise ValueError(f"revision {revision!r}: not a usable branch, tag or commit")
    return f"models/{org}--{name}/{flat}"


def _repo_folder(model: str) -> str:
    org, name = _split_model(model)
    return f"models--{org}--{name}"


# --- which files ----------------------------------------------------------------------------------

# Folders whose content is another runtime's copy of the model, or documentation.
EXCLUDED_DIRS = frozenset(
    {"onnx", "openvino", "coreml", "tf", "tflite", "flax", "mlx", "gguf", "tensorrt",
     "images", "imgs", "assets", "docs", ".git", "original"}
)
# Tokenizer and config files that are not JSON.
TOKENIZER_FILES = frozenset(
    {"vocab.txt", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
     "sentencepiece.model", "source.spm", "target.spm", "vocab.model", "qwen.tiktoken",
     "tokenizer.tiktoken", "chat_template.jinja"}
)
MODULE_DIR = re.compile(r"\d+_[A-Za-z][A-Za-z0-9_]*")  # sentence-transformers: 1_Pooling, 2_Dense
SAFETENSORS_MODEL = re.compile(r"model(-\d+-of-\d+)?\.safetensors")
PYTORCH_BIN = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")


def _weights_level(parts: tuple[str, ...]) -> bool:
    """Weights are taken at the repository root and in sentence-transformers module folders."""
    return len(parts) == 1 or (len(parts) == 2 and MODULE_DIR.fullmatch(parts[0]) is not None)


def select_files(filenames: Iterable[str]) -> list[str]:
    """The files of a repository listing that the engines need, sorted, one weight format per
    folder: safetensors where the folder has any (model*.safetensors when present, and its
    index), else pytorch_model*.bin (and its index). Configs, tokenizer files and *.json anywhere
    outside the excluded folders (the tokenizer's other files where weights are taken: the root
    and sentence-transformers module folders such as 0_Transformer/); no ONNX, OpenVINO, TF, Flax, Rust, GGUF, Core ML, TFLite,
    README or images."""
    names = sorted({str(f) for f in filenames})
    by_dir: dict[str, list[str]] = {}
    for name in names:
        by_dir.setdefault(str(PurePosixPath(name).parent), []).append(PurePosixPath(name).name)

    weights: set[str] = set()
    drop_index: set[str] = set()
    for folder, files in by_dir.items():
        parts = PurePosixPath(folder).parts if folder != "." else ()
        if not _weights_level(parts + ("x",)):
            continue
        prefix = "" if folder == "." else folder + "/"
        safetensors = [f for f in files if f.endswith(".safetensors")]
        if safetensors:
            preferred = [f for f in safetensors if SAFETENSORS_MODEL.fullmatch(f)]
            chosen = preferred or safetensors
            drop_index.add(prefix + "pytorch_model.bin.index.json")
        else:
            chosen = [f for f in files if PYTORCH_BIN.fullmatch(f)]
            drop_index.add(prefix + "model.safetensors.index.json")
        weights.update(prefix + f for f in chosen)

    keep = []
    for name in names:
        path = PurePosixPath(name)
        if any(part in EXCLUDED_DIRS for part in path.parts[:-1]):
            continue
        if name in weights:
            keep.append(name)
        elif name in drop_index:
            continue
        elif path.suffix == ".json":
            keep.append(name)
        elif path.name in TOKENIZER_FILES and _weights_level(path.parts):
            keep.append(name)
    return keep


# --- errors ---------------------------------------------------------------------------------------

PERMANENT = {"InvalidSpec", "Unauthorized", "RepositoryNotFound", "RevisionNotFound", "EntryNotFound",
             "InsufficientStorage"}


class DownloadError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message

    @property
    def exit_code(self) -> int:
        return 2 if self.reason in PERMANENT else 1


@dataclass
class Context:
    model: str
    revision: str
    token_given: bool
    current_file: str | None = None
    missing_bytes: int = 0


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def classify(error: BaseException, ctx: Context) -> DownloadError:
    """The reason and a message that says what to fix, for an exception of the download."""
    if isinstance(error, DownloadError):
        return error
    import httpx2
    from huggingface_hub import errors as hf

    what = f"{ctx.model}@{ctx.revision}"
    if ctx.token_given:
        token = ("a token was given (HF_TOKEN) but the Hub refused it: check that the Secret "
                 "named by spec.hfTokenSecretRef of the ModelCache holds a valid read token of an "
                 "account with access to the repository")
    else:
        token = ("no token was given: if the repository is private or gated, put a read token "
                 "in a Secret and name it in spec.hfTokenSecretRef of the ModelCache")
    retried = "; the Job is retried and the files already fetched are kept"
    for e in _chain(error):
        status = _status(e)
        if isinstance(e, hf.HFValidationError):
            return DownloadError("InvalidSpec", f"{what}: {e}: fix spec.model or spec.revision")
        if isinstance(e, hf.GatedRepoError):
            return DownloadError("Unauthorized", f"{what}: the repository is gated; accept its "
                                 f"terms on the Hub with the token's account; {token}")
        if isinstance(e, hf.RevisionNotFoundError):
            return DownloadError("RevisionNotFound", f"{what}: the repository has no revision "
                                 f"{ctx.revision!r}: set spec.revision to an existing branch, tag "
                                 "or commit")
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return DownloadError("EntryNotFound", f"{what}: the file {ctx.current_file!r} is "
                                 "listed in the repository but the Hub does not serve it: pin "
                                 "spec.revision to a commit whose files are complete, or report "
                                 "it to the repository's owner")
        if status in (401, 403):
            return DownloadError("Unauthorized", f"{what}: the Hub answered {status} (a private "
                                 f"or gated repository, or one that does not exist); {token}; "
                                 "if it is public, check spec.model")
        if isinstance(e, hf.RepositoryNotFoundError):
            return DownloadError("RepositoryNotFound", f"{what}: no such repository on the Hub: "
                                 "check spec.model (ORG/NAME)")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return DownloadError("InsufficientStorage", f"{what}: the volume is full while "
                                 f"writing {ctx.current_file!r}; {ctx.missing_bytes} bytes "
                                 f"({_gib(ctx.missing_bytes)}) were still to fetch: raise the "
                                 "ModelCache's storage size by at least that much")
        if status is not None and status >= 400:
            return DownloadError("ServerError", f"{what}: the Hub answered {status}{retried}")
        if isinstance(e, httpx2.TransportError):
            return DownloadError("NetworkError", f"{what}: {type(e).__name__}: {e} (fetching "
                                 f"{ctx.current_file or 'the file list'}){retried}; check the "
                                 "cluster's egress to the Hub if it persists")
        if isinstance(e, OSError) and "Consistency check failed" in str(e):
            return DownloadError("NetworkError", f"{what}: {ctx.current_file!r} arrived "
                                 f"incomplete{retried}")
    return DownloadError("ServerError", f"{what}: {type(error).__name__}: {error}{retried}")


# --- progress -------------------------------------------------------------------------------------


class Progress:
    """Bytes done of the bytes to fetch, logged at most every `interval` seconds."""

    def __init__(self, total: int, done: int = 0, interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None):
        self.total, self.done, self.interval, self.clock = total, done, interval, clock
        self.emit = emit or log.info
        self.last = clock()
        self.lock = threading.Lock()

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return f"progress: {self.done}/{self.total} bytes ({percent:.1f}%)"

    def add(self, n: int | float | None) -> None:
        with self.lock:
            self.done += int(n or 0)
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self.emit(self.line())

    def bar_class(self) -> type:
        """A tqdm stand-in for huggingface_hub's `tqdm_class` hooks: counts, draws nothing."""
        progress = self

        class Bar:
            def __init__(self, *args, **kwargs):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n=1):
                progress.add(n)

            def __getattr__(self, name):  # close, refresh, set_postfix_str, update_transfer...
                return lambda *args, **kwargs: None

        return Bar


# --- the download ---------------------------------------------------------------------------------


def _complete_record(root: Path, model: str, commit: str) -> Path:
    org, name = _split_model(model)
    return root / "models" / f"{org}--{name}" / COMPLETE_DIR / f"{commit}.json"


def _link(root: Path, model: str, revision: str, commit: str) -> None:
    """Point models/org--name/<revision> at the commit's snapshot: a relative link, swapped in
    with os.replace so readers see the old target or the new one, never none."""
    link = root / model_path(model, revision)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(root / "hub" / _repo_folder(model) / "snapshots" / commit,
                             link.parent)
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _result(root: Path, model: str, revision: str, commit: str, files: list[str]) -> dict:
    snapshot = root / "hub" / _repo_folder(model) / "snapshots" / commit
    size = sum((snapshot / f).stat().st_size for f in files)
    return {"commit": commit, "bytes": size, "files": len(files),
            "path": model_path(model, revision)}


def download(model: str, revision: str, root: Path, *, token: str | None = None,
             endpoint: str | None = None, ctx: Context | None = None) -> dict:
    """Fetch `model` at `revision` into `root` (see the module's docstring); returns the result
    dict. Raises huggingface_hub's or httpx's exceptions, or OSError; `classify` names them."""
    root = Path(root)
    ctx = ctx or Context(model, revision, bool(token))
    model_path(model, revision)  # validates both

    if COMMIT.fullmatch(revision):
        record = _complete_record(root, model, revision)
        if record.is_file():
            files = json.loads(record.read_text())["files"]
            snapshot = root / "hub" / _repo_folder(model) / "snapshots" / revision
            if all((snapshot / f).exists() for f in files):
                _link(root, model, revision, revision)
                log.info("%s@%s: complete on the volume, nothing to fetch", model, revision)
                return _result(root, model, revision, revision, files)

    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    hub = root / "hub"
    storage = hub / _repo_folder(model)
    info = HfApi(endpoint=endpoint, token=token if token else False).model_info(
        model, revision=revision, files_metadata=True)
    commit = info.sha
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    files = select_files(sizes)
    log.info("%s@%s: commit %s, %d of %d files selected, %d bytes", model, revision, commit,
             len(files), len(sizes), sum(sizes[f] for f in files))
    snapshot = storage / "snapshots" / commit
    missing = [f for f in files if not (snapshot / f).exists()]
    total = sum(sizes[f] for f in missing)
    ctx.missing_bytes = total
    if missing:
        hub.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(hub).free
        if free < total:
            raise DownloadError("InsufficientStorage", f"{model}@{revision}: {total} bytes "
                                f"({_gib(total)}) to fetch, {free} bytes free on the volume: "
                                f"raise the ModelCache's storage size by at least "
                                f"{_gib(total - free)}")
    progress = Progress(total)
    bar = progress.bar_class()
    auth = token if token else False
    for name in missing:
        ctx.current_file = name
        log.info("fetching %s (%d bytes)", name, sizes[name])
        url = hf_hub_url(model, name, revision=commit, endpoint=endpoint)
        meta = get_hf_file_metadata(url, token=auth, endpoint=endpoint)
        blob = storage / "blobs" / meta.etag
        if meta.xet_file_data is None and not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            partial = blob.with_name(blob.name + ".incomplete")
            with open(partial, "ab") as out:
                resume = out.tell()
                if meta.size is not None and resume > meta.size:
                    out.truncate(0)
                    resume = 0
                if resume:
                    log.info("resuming %s at byte %d", name, resume)
                    progress.add(resume)
                headers = build_hf_headers(token=auth)
                if meta.location.split("/")[2] != url.split("/")[2]:
                    headers.pop("authorization", None)  # a CDN's signed URL
                http_get(meta.location, out, resume_size=resume, headers=headers,
                         expected_size=meta.size, displayed_filename=name, tqdm_class=bar)
            if SHA256.fullmatch(meta.etag) and _sha256(partial) != meta.etag:
                partial.unlink()
                raise DownloadError("NetworkError", f"{model}@{revision}: {name} arrived "
                                    "corrupted (sha256 differs) and was deleted; the Job is "
                                    "retried and the files already fetched are kept")
            os.replace(partial, blob)
        elif blob.exists():
            progress.add(sizes[name])
        hf_hub_download(model, name, revision=commit, cache_dir=hub, token=auth,
                        endpoint=endpoint, tqdm_class=bar)
    ctx.current_file = None
    if missing:
        log.info(progress.line())
    if revision != commit:
        _write_atomic(storage / "refs" / revision, commit)
    _write_atomic(_complete_record(root, model, commit),
                  json.dumps({"model": model, "commit": commit, "files": files}))
    _link(root, model, revision, commit)
    result = _result(root, model, revision, commit, files)
    log.info("%s@%s: commit %s complete, %d files, %d bytes, at %s", model, revision, commit,
             result["files"], result["bytes"], result["path"])
    return result


# --- the Job's program ----------------------------------------------------------------------------


def _terminate(path: str, payload: dict) -> None:
    text = json.dumps(payload)
    if len(text.encode()) > TERMINATION_LIMIT:
        payload = dict(payload, message=payload.get("message", "")[:TERMINATION_LIMIT // 2])
        text = json.dumps(payload)[:TERMINATION_LIMIT]
    try:
        Path(path).write_text(text)
    except OSError as e:
        log.warning("cannot write the termination log %s: %s", path, e)


def wait_until_complete(root: Path, model: str, revision: str, interval: float = 5.0) -> None:
    """Returns once `revision` of `model` is complete under `root` (its link exists: it is made
    only when every file is there); reads the volume only."""
    path = root / model_path(model, revision)
    if not path.exists():
        log.info("waiting for %s@%s to be complete at %s", model, revision, path)
    while not path.exists():
        time.sleep(interval)
    log.info("%s@%s is complete at %s", model, revision, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelservice.cache.download",
        description="Fetch one model revision from the Hub onto the ModelCache volume.")
    parser.add_argument("--model", required=True, help="ORG/NAME")
    parser.add_argument("--revision", default="main", help="branch, tag or 40-hex commit")
    parser.add_argument("--dir", default="/models", type=Path, help="the volume's root")
    parser.add_argument("--termination-log", default="/dev/termination-log")
    parser.add_argument("--wait", action="store_true",
                        help="fetch nothing: wait until the revision is complete on the volume, then exit 0")
    parser.add_argument("--wait-interval", type=float, default=5.0, help="seconds between two looks (--wait)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request: too many
    # The library's terminal bars are of no use in a pod's log; Progress logs instead.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    token = os.environ.get("HF_TOKEN") or None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    ctx = Context(args.model, args.revision, token is not None)
    try:
        model_path(args.model, args.revision)
    except ValueError as e:
        _terminate(args.termination_log, {"reason": "InvalidSpec", "message": f"{e}: fix "
                                          "spec.model or spec.revision of the ModelCache"})
        log.error("%s", e)
        return 2
    if args.wait:
        wait_until_complete(args.dir, args.model, args.revision, args.wait_interval)
        return 0
    try:
        result = download(args.model, args.revision, args.dir, token=token, endpoint=endpoint,
                          ctx=ctx)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the operator
        failure = classify(e, ctx)
        log.error("%s: %s", failure.reason, failure.message, exc_info=not isinstance(
            e, DownloadError))
        _terminate(args.termination_log, {"reason": failure.reason, "message": failure.message})
        return failure.exit_code
    print(result["commit"], flush=True)
    _terminate(args.termination_log, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
