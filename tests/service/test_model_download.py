"""The ModelCache download Job (`python -m modelservice.cache.download`) as a process, with the real
huggingface_hub client, against the Hub stand-in (testkit.hub) on 127.0.0.1: what it
fetches, what a second run fetches, resuming a cut download, the failure reasons, and the
reranker loading the result offline.

The bytes a new replica fetches with and without the cache are written to
.cache/model-download-bytes.json (test_fresh_download_fetches_the_selected_files_only).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.processes import start_reranker
from modelservice.cache.download import model_path, select_files
from testkit.hub import HubServer, files_of
from testkit.models import MINILM_DIR, shared_tiny_model

ROOT = Path(__file__).resolve().parents[2]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# Other runtimes' copies of the model, as the real repository has them; never to be fetched.
DUPLICATES = {
    "onnx/model.onnx": os.urandom(3 << 20),
    "onnx/model_O4.onnx": os.urandom(1 << 20),
    "openvino/openvino_model.bin": os.urandom(1 << 20),
    "openvino/openvino_model.xml": b"<net/>",
    "tf_model.h5": os.urandom(2 << 20),
    "rust_model.ot": os.urandom(1 << 20),
    "pytorch_model.bin": os.urandom(2 << 20),
    "train_script.py": b"print('train')\n",
}


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def run(hub: HubServer, tmp_path: Path, model: str, revision: str | None = None,
        token: str | None = None, timeout: float = 120, endpoint: str | None = None) -> tuple[int, dict, str]:
    """One download Job; returns its exit status, termination message and log."""
    term = tmp_path / "termination-log"
    term.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint or hub.url, HF_HOME=str(tmp_path / "hf-home"))
    if token is not None:
        env["HF_TOKEN"] = token
    args = [sys.executable, "-m", "modelservice.cache.download", "--model", model,
            "--dir", str(tmp_path / "volume"), "--termination-log", str(term)]
    if revision is not None:
        args += ["--revision", revision]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    message = json.loads(term.read_text()) if term.exists() else {}
    assert len(term.read_bytes()) < 4096
    return done.returncode, message, done.stderr


def volume_files(tmp_path: Path, path: str) -> dict[str, Path]:
    """The files the link at `path` shows, by repository path."""
    link = tmp_path / "volume" / path
    return {p.relative_to(link).as_posix(): p for p in sorted(link.rglob("*")) if p.is_file()}


REPORT = ROOT / ".cache" / "model-download-bytes.json"


def record_bytes(**values) -> None:
    """Add measured numbers to .cache/model-download-bytes.json (for the issue's notes)."""
    REPORT.parent.mkdir(exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    REPORT.write_text(json.dumps({**report, **values}, indent=2))


def file_bytes(hub: HubServer, name: str) -> int:
    return sum(n for path, n in hub.body_bytes.items() if path.endswith("/" + name))


def test_fresh_download_fetches_the_selected_files_only(hub, tmp_path):
    files = {**files_of(MINILM_DIR), **DUPLICATES}
    commit = hub.add_repo(MINILM, files)
    rc, result, log = run(hub, tmp_path, MINILM)
    assert rc == 0, log
    selected = select_files(files)
    path = model_path(MINILM, "main")
    size = sum(files[f].stat().st_size for f in selected)
    assert result == {"commit": commit, "bytes": size, "files": len(selected), "path": path}

    link = tmp_path / "volume" / path
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve().name == commit and link.resolve().parent.name == "snapshots"
    on_disk = volume_files(tmp_path, path)
    assert sorted(on_disk) == selected
    for name, local in on_disk.items():
        assert filecmp.cmp(local, files[name], shallow=False), name

    fetched = sum(hub.body_bytes.values())
    assert fetched == size
    for name in DUPLICATES:
        assert file_bytes(hub, name) == 0 and not [p for p in hub.requests if p.endswith(name)]
    assert "progress: " in log and "fetching model.safetensors" in log

    # A second replica with the cache reads the volume: it fetches nothing (next test); a
    # replica without it downloads the selected set again, every time.
    record_bytes(model=MINILM, selected_files=len(selected), repository_files=len(files),
                 fresh_download_bytes=fetched,
                 duplicate_format_bytes_not_fetched=sum(len(v) for v in DUPLICATES.values()),
                 new_replica_without_cache_bytes=fetched, new_replica_with_cache_bytes=0)


def test_a_second_run_fetches_no_file(hub, tmp_path):
    commit = hub.add_repo(MINILM, files_of(MINILM_DIR))
    assert run(hub, tmp_path, MINILM)[0] == 0
    hub.reset_counters()

    rc, result, log = run(hub, tmp_path, MINILM)
    assert rc == 0, log
    assert result["commit"] == commit
    # One metadata request (the revision's commit and file list), no file.
    assert hub.log == [("GET", f"/api/models/{MINILM}/revision/main?blobs=true", 200, 0)]
    record_bytes(second_run_bytes=0, second_run_requests=[" ".join(e[:2]) for e in hub.log])

    hub.reset_counters()
    rc, result, log = run(hub, tmp_path, MINILM, revision=commit)
    assert rc == 0, log
    assert hub.log == []  # a commit complete on the volume: no network at all
    assert result["path"] == model_path(MINILM, commit)
    assert sorted(volume_files(tmp_path, result["path"])) == select_files(files_of(MINILM_DIR))


def test_a_cut_download_resumes_on_the_next_run(hub, tmp_path):
    weights = MINILM_DIR / "model.safetensors"
    size, cut = weights.stat().st_size, 30_000_000
    hub.add_repo(MINILM, files_of(MINILM_DIR))
    # The connection drops after `cut` bytes and the Hub stays unreachable for this file
    # longer than the client's own retries.
    hub.interrupt(MINILM, "model.safetensors", after=cut, refuse=20)
    rc, failure, log = run(hub, tmp_path, MINILM)
    assert rc == 1, log
    assert failure["reason"] == "NetworkError" and "kept" in failure["message"]
    assert file_bytes(hub, "model.safetensors") == cut
    assert not (tmp_path / "volume" / model_path(MINILM, "main")).exists()

    hub.reset_counters()
    hub.interrupt(MINILM, "model.safetensors", after=size, refuse=0)  # no more cuts
    rc, result, log = run(hub, tmp_path, MINILM)
    assert rc == 0, log
    # The client writes what it receives in chunks of up to 10 MiB: the partial file holds the
    # chunks completed before the cut, and the next run asks for the rest with a Range.
    kept = int(re.search(r"resuming model.safetensors at byte (\d+)", log)[1])
    assert cut - (10 << 20) <= kept <= cut
    assert file_bytes(hub, "model.safetensors") == size - kept
    assert ("GET", f"/{MINILM}/resolve/{result['commit']}/model.safetensors", 206,
            size - kept) in hub.log
    record_bytes(resumed_run_bytes=sum(hub.body_bytes.values()), cut_after=cut,
                 kept_from_the_cut_run=kept, weights_bytes=size)
    on_disk = volume_files(tmp_path, result["path"])
    assert filecmp.cmp(on_disk["model.safetensors"], weights, shallow=False)
    assert not list((tmp_path / "volume" / "hub").rglob("*.incomplete"))


def test_a_short_cut_is_resumed_within_the_run(hub, tmp_path):
    weights = MINILM_DIR / "model.safetensors"
    hub.add_repo(MINILM, files_of(MINILM_DIR))
    hub.interrupt(MINILM, "model.safetensors", after=25_000_000, refuse=0)
    rc, result, log = run(hub, tmp_path, MINILM)
    assert rc == 0, log
    # The client continues with a Range from its last whole 10 MiB chunk.
    size = weights.stat().st_size
    assert size <= file_bytes(hub, "model.safetensors") <= size + (10 << 20)
    assert [e[2] for e in hub.log if e[:2] == ("GET", f"/{MINILM}/resolve/{result['commit']}"
                                               "/model.safetensors")] == [200, 206]
    assert filecmp.cmp(volume_files(tmp_path, result["path"])["model.safetensors"], weights,
                       shallow=False)


SMALL = {"config.json": b'{"model_type": "bert"}', "tokenizer.json": b"{}",
         "model.safetensors": os.urandom(1 << 20), "README.md": b"# small"}


@pytest.mark.parametrize("token, says", [
    (None, "no token was given"), ("wrong", "a token was given (HF_TOKEN) but the Hub refused"),
], ids=["no-token", "wrong-token"])
def test_a_private_repository_needs_the_token(hub, tmp_path, token, says):
    hub.add_repo("org/private", SMALL, token="secret")
    rc, failure, log = run(hub, tmp_path, "org/private", token=token)
    assert rc == 2, log
    assert failure["reason"] == "Unauthorized"
    assert says in failure["message"] and "spec.hfTokenSecretRef" in failure["message"]
    assert sum(hub.body_bytes.values()) == 0

    rc, result, log = run(hub, tmp_path, "org/private", token="secret")
    assert rc == 0 and result["files"] == 3, log


def test_a_listed_file_the_hub_does_not_serve(hub, tmp_path):
    hub.add_repo("org/broken", SMALL, missing=("tokenizer.json",))
    rc, failure, log = run(hub, tmp_path, "org/broken")
    assert rc == 2, log
    assert failure["reason"] == "EntryNotFound" and "'tokenizer.json'" in failure["message"]
    assert not (tmp_path / "volume" / model_path("org/broken", "main")).exists()


def test_an_unknown_revision(hub, tmp_path):
    hub.add_repo("org/small", SMALL)
    rc, failure, log = run(hub, tmp_path, "org/small", revision="v9")
    assert rc == 2, log
    assert failure["reason"] == "RevisionNotFound" and "'v9'" in failure["message"]


def test_an_unreachable_hub_is_transient(tmp_path):
    with HubServer() as hub:
        url = hub.url
    # stopped: its port refuses connections
    rc, failure, log = run(hub, tmp_path, "org/small", endpoint=url)
    assert rc == 1, log
    assert failure["reason"] == "NetworkError"


def test_a_moved_branch_shares_the_unchanged_blobs(hub, tmp_path):
    old = hub.add_repo("org/small", SMALL)
    assert run(hub, tmp_path, "org/small")[0] == 0
    assert run(hub, tmp_path, "org/small", revision=old)[0] == 0  # the operator's pin
    new = hub.add_repo("org/small", {**SMALL, "config.json": b'{"model_type": "bert", "v": 2}'})
    hub.reset_counters()

    rc, result, log = run(hub, tmp_path, "org/small")
    assert rc == 0, log
    assert result["commit"] == new
    assert {p for p, n in hub.body_bytes.items() if n} == {
        f"/org/small/resolve/{new}/config.json"}
    now, before = (volume_files(tmp_path, model_path("org/small", r)) for r in ("main", old))
    assert now["config.json"].read_bytes().endswith(b'"v": 2}')
    assert before["config.json"].read_bytes() == SMALL["config.json"]
    assert now["model.safetensors"].resolve() == before["model.safetensors"].resolve()


def test_the_reranker_serves_the_downloaded_model_offline(hub, tmp_path, tmp_path_factory):
    model = shared_tiny_model(tmp_path_factory.getbasetemp())
    hub.add_repo("org/tiny-qwen3-reranker", files_of(model))
    rc, result, log = run(hub, tmp_path, "org/tiny-qwen3-reranker")
    assert rc == 0, log
    hub.stop()  # the pod runs offline
    backend = start_reranker(tmp_path / "volume" / result["path"],
                             env={"HF_HOME": str(tmp_path / "empty-hf-home")})
    try:
        answer = httpx.post(f"{backend.url}/v1/rerank",
                            json={"query": "cats", "documents": ["cats purr", "stocks fell"]},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == 2
    finally:
        backend.stop()


def test_the_stand_in_serves_snapshot_download(hub, tmp_path):
    """The stand-in's tree listing, as huggingface_hub's own snapshot_download reads it."""
    from huggingface_hub import snapshot_download

    hub.add_repo("org/small", {**SMALL, "1_Pooling/config.json": b"{}"})
    path = snapshot_download("org/small", cache_dir=tmp_path / "hub", endpoint=hub.url,
                             token=False, allow_patterns=["*.json", "1_Pooling/*"])
    assert sorted(files_of(path)) == ["1_Pooling/config.json", "config.json", "tokenizer.json"]


@pytest.mark.parametrize("case", ["no-token", "missing-file"])
def test_the_downloaders_failure_is_the_caches_download_failed_message(hub, tmp_path, case):
    """What a failed Job's pod leaves in its termination message (this real run's) is what the
    user reads in the ModelCache's Cached condition, with how to retry."""
    from modelservice.cache.builders import build_cache_status, job_name
    from modelservice.api.models import parse_modelcache

    if case == "no-token":
        hub.add_repo("org/private", SMALL, token="secret")
        model, fix = "org/private", "spec.hfTokenSecretRef"
    else:
        hub.add_repo("org/broken", SMALL, missing=("tokenizer.json",))
        model, fix = "org/broken", "'tokenizer.json'"
    rc, failure, log = run(hub, tmp_path, model)
    assert rc == 2, log
    cache = parse_modelcache({"metadata": {"name": "c", "namespace": "ml"}, "spec": {"model": model, "size": "1Gi"}})
    pod = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {},
           "status": {"phase": "Failed", "containerStatuses": [{"name": "download", "state": {"terminated": {
               "exitCode": rc, "message": json.dumps(failure)}}}]}}
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    (cond,) = build_cache_status(cache, now="2026-01-01T00:00:00Z", job=job, pods=[pod])["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "DownloadFailed")
    assert failure["message"] in cond["message"] and fix in cond["message"]
    assert f"kubectl delete job -n ml {job_name(cache)}" in cond["message"]
