"""A local stand-in for the Hugging Face Hub, for the download Job's tests (never used by the
operator itself).

The Hub cannot be reached from the test machines, so `HubServer` serves local files as model
repositories over plain HTTP on 127.0.0.1 (or the address given), in the Hub's published URL layout, implementing what
the installed huggingface_hub client (2.4) calls for a download:

- `GET /api/models/{org}/{name}/revision/{rev}` (`HfApi.model_info`; `?blobs=true` adds each
  sibling's size, blobId and lfs {sha256, size, pointerSize}) -> {id, sha, siblings, ...};
- `GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=true` (`list_repo_tree`, which
  `snapshot_download` calls) -> [{type, oid, size, path, lfs}], one page;
- `HEAD` and `GET /{org}/{name}/resolve/{rev}/{path}` with the headers the client reads:
  X-Repo-Commit, ETag (the git blob sha1 of a regular file), X-Linked-Etag and X-Linked-Size
  (the sha256 and size of an LFS file: weights and files of 1 MiB or more), Content-Length,
  Accept-Ranges; a `Range: bytes=N-[M]` request answers 206 with Content-Range.
- errors as the client tells them apart: 404 + X-Error-Code RepoNotFound / RevisionNotFound /
  EntryNotFound; for a repository that needs a token, 401 + X-Error-Code RepoNotFound without
  one (the Hub hides private repositories), 401 + X-Error-Message "Invalid credentials in
  Authorization header" with a wrong one.

No xet: without the X-Xet-* headers the client downloads over plain HTTP. No redirect to a CDN:
files are answered directly.

Repositories: `add_repo(repo, files)` publishes a commit on a branch (default "main") and returns
its 40-hex sha; calling it again with other files moves the branch to a new commit (the old one
stays reachable by its sha). `files` maps repository paths to a local file (Path) or to bytes;
`files_of(directory)` lists a directory that way. `token=` makes the repository private,
`missing=` lists files that the listing names but resolve answers 404 for.
`interrupt(repo, path, after=N, refuse=K)` cuts the connection after N body bytes of the next
GET of that file, then closes the next K connections asking for it without an answer.
Counters: `requests` ("METHOD /path" -> count), `body_bytes` ("/path" -> bytes of file bodies
sent), `log` [(method, path-with-query, status, body bytes)]; `reset_counters()`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data",
                ".gguf", ".tflite", ".model", ".pt", ".pth", ".ckpt")
LFS_MIN_SIZE = 1 << 20


@dataclass(frozen=True)
class HubFile:
    path: str
    source: Path | bytes
    size: int
    sha256: str
    git_sha1: str

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES) or self.size >= LFS_MIN_SIZE

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    @classmethod
    def of(cls, path: str, source: Path | bytes) -> "HubFile":
        sha256, git = hashlib.sha256(), hashlib.sha1()
        if isinstance(source, bytes):
            size = len(source)
            chunks = [source]
        else:
            source = Path(source)
            size = source.stat().st_size
            chunks = None
        git.update(b"blob %d\0" % size)
        if chunks is None:
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    sha256.update(chunk)
                    git.update(chunk)
        else:
            sha256.update(source)
            git.update(source)
        return cls(path, source, size, sha256.hexdigest(), git.hexdigest())


@dataclass
class HubRepo:
    id: str
    token: str | None = None
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass
class _Cut:
    after: int
    refuse: int
    cut_done: bool = False


def files_of(directory: str | Path) -> dict[str, Path]:
    """Every file under `directory`, by its repository path."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*"))
            if p.is_file()}


class HubServer:
    """The Hub stand-in in a thread; `start()`, `url`, `stop()` (or `with`).

    It listens on 127.0.0.1 unless `host` names another local address: the real node's pods
    reach it on the host side of the node's veth (tests/cluster/real_node.py, `host_ip`)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.repos: dict[str, HubRepo] = {}
        self.cuts: dict[tuple[str, str], _Cut] = {}
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self.log: list[tuple[str, str, int, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- publishing -------------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, Path | bytes], *, branch: str = "main",
                 token: str | None = None, missing: tuple[str, ...] = ()) -> str:
        """Publish `files` as a new commit of `repo` on `branch`; returns the commit's sha."""
        hub_files = {path: HubFile.of(path, source) for path, source in sorted(files.items())}
        with self.lock:
            r = self.repos.setdefault(repo, HubRepo(repo))
            if token is not None:
                r.token = token
            r.missing |= set(missing)
            parent = r.refs.get(branch, "")
            listing = [(p, f.etag) for p, f in hub_files.items()]
            commit = hashlib.sha1(json.dumps([repo, branch, parent, listing]).encode()).hexdigest()
            r.commits[commit] = hub_files
            r.refs[branch] = commit
        return commit

    def interrupt(self, repo: str, path: str, *, after: int, refuse: int = 0) -> None:
        with self.lock:
            self.cuts[(repo, path)] = _Cut(after, refuse)

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.body_bytes.clear()
            self.log.clear()

    def file_requests(self) -> list[tuple[str, str, int, int]]:
        """The log's requests for files (resolve), as opposed to metadata (api)."""
        return [entry for entry in self.log if "/resolve/" in entry[1]]

    # --- serving -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Refused(Exception):
    pass


_API = re.compile(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/(.*))?")
_RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format, *args):  # quiet
        pass

    def do_HEAD(self):
        self._handle(head=True)

    def do_GET(self):
        self._handle(head=False)

    # --- plumbing ----------------------------------------------------------------------------

    def _record(self, status: int, body: int) -> None:
        hub = self.server_hub
        path = urlsplit(self.path).path
        with hub.lock:
            hub.requests[f"{self.command} {path}"] += 1
            hub.body_bytes[path] += body
            hub.log.append((self.command, self.path, status, body))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._record(status, 0)

    def _error(self, status: int, code: str | None, message: str, head: bool,
               extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _authorized(self, repo: HubRepo, head: bool) -> bool:
        if repo.token is None:
            return True
        given = self.headers.get("authorization")
        if given is None:
            self._error(401, "RepoNotFound", "Repository not found", head)
            return False
        if given != f"Bearer {repo.token}":
            self._error(401, None, "Invalid credentials in Authorization header", head)
            return False
        return True

    def _handle(self, head: bool) -> None:
        split = urlsplit(self.path)
        path = split.path
        try:
            if m := _API.fullmatch(path):
                self._api(m, parse_qs(split.query), head)
            elif m := _RESOLVE.fullmatch(path):
                self._resolve(unquote(m[1]), unquote(m[2]), unquote(m[3]), head)
            else:
                self._error(404, None, "Not found", head)
        except _Refused:
            self._record(0, 0)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _repo(self, repo_id: str, revision: str, head: bool) -> tuple[HubRepo, str] | None:
        hub = self.server_hub
        with hub.lock:
            repo = hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        if not self._authorized(repo, head):
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None
        return repo, commit

    # --- the API -------------------------------------------------------------------------------

    def _api(self, m: re.Match, query: dict, head: bool) -> None:
        repo_id, kind, revision, sub = unquote(m[1]), m[2], unquote(m[3]), m[4]
        found = self._repo(repo_id, revision, head)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        if kind == "revision":
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for f in files.values():
                sibling: dict = {"rfilename": f.path}
                if blobs:
                    sibling.update(size=f.size, blobId=f.git_sha1)
                    if f.lfs:
                        sibling["lfs"] = {"sha256": f.sha256, "size": f.size,
                                          "pointerSize": 134}
                siblings.append(sibling)
            body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit,
                    "private": repo.token is not None, "gated": False, "disabled": False,
                    "tags": [], "downloads": 0, "likes": 0, "siblings": siblings,
                    "lastModified": "2025-01-01T00:00:00.000Z"}
        else:
            prefix = unquote(sub).rstrip("/") + "/" if sub else ""
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries, dirs = [], set()
            for f in files.values():
                if not f.path.startswith(prefix):
                    continue
                rest = f.path[len(prefix):]
                if "/" in rest and not recursive:
                    dirs.add(prefix + rest.split("/")[0])
                    continue
                parts = rest.split("/")
                for i in range(1, len(parts)):
                    dirs.add(prefix + "/".join(parts[:i]))
                entry = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(entry)
            entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                         "size": 0, "path": d} for d in sorted(dirs)]
            body = entries
        self._send(200, json.dumps(body).encode(), head=head)

    # --- files -----------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        hub = self.server_hub
        with hub.lock:
            cut = hub.cuts.get((repo_id, name))
            if cut is not None and cut.cut_done and cut.refuse > 0:
                cut.refuse -= 1
                raise _Refused()
        found = self._repo(repo_id, revision, head)
        if found is None:
            return
        repo, commit = found
        f = repo.commits[commit].get(name)
        commit_header = {"X-Repo-Commit": commit}
        if f is None or name in repo.missing:
            self._error(404, "EntryNotFound", "Entry not found", head, commit_header)
            return
        headers = {**commit_header, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{quote(name.split("/")[-1])}"'}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        start, end, status = 0, f.size, 200
        if not head and (m := _RANGE.fullmatch(self.headers.get("Range", "").strip())):
            start = int(m[1])
            end = min(int(m[2]) + 1, f.size) if m[2] else f.size
            if start >= f.size:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{f.size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            self._record(status, 0)
            return
        limit = None
        with hub.lock:
            if cut is not None and not cut.cut_done:
                cut.cut_done = True
                limit = cut.after
        sent = 0
        position = start
        try:
            while position < end and (limit is None or sent < limit):
                size = min(1 << 20, end - position)
                if limit is not None:
                    size = min(size, limit - sent)
                chunk = f.read(position, position + size)
                self.wfile.write(chunk)
                sent += len(chunk)
                position += len(chunk)
            self.wfile.flush()
        finally:
            self._record(status, sent)
        if limit is not None and position < end:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
