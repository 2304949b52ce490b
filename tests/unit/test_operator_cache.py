"""The ModelCache's pure side: the download Job's name and revision, and the status a user reads
from the Job and its pods (modelservice.cache.builders)."""
from __future__ import annotations

import json

import pytest

from modelservice.cache.builders import (build_cache_status, build_download_job, cache_mount, fetch_revision, job_name)
from modelservice.api.models import parse_modelcache

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
COMMIT = "a" * 40


def cache(status=None, name="qwen", **spec):
    return parse_modelcache({"metadata": {"name": name, "namespace": "ml", "generation": 2},
                             "spec": {"model": "Qwen/Qwen3-Reranker-0.6B", "size": "10Gi", **spec},
                             "status": status or {}})


def job(state=None):
    conditions = [{"type": state, "status": "True", "reason": "BackoffLimitExceeded" if state == "Failed" else "",
                   "message": "Job has reached the specified backoff limit" if state == "Failed" else ""}] if state else []
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def pod(phase, code=None, message=None, node="node-a", created=NOW):
    terminated = {"exitCode": code} if code is not None else None
    if terminated is not None and message is not None:
        terminated["message"] = message if isinstance(message, str) else json.dumps(message)
    statuses = [{"name": "download", "state": {"terminated": terminated} if terminated else {"running": {}}}]
    return {"metadata": {"creationTimestamp": created}, "spec": {"nodeName": node},
            "status": {"phase": phase, "containerStatuses": statuses}}


def cached(status):
    (cond,) = status["conditions"]
    return cond["status"], cond["reason"], cond["message"]


def test_a_running_job_says_downloading_and_where_the_progress_is():
    status = build_cache_status(cache(), now=NOW, job=job(), pods=[pod("Running")], users=["rr"])
    ok, reason, message = cached(status)
    assert (ok, reason) == ("False", "Downloading")
    assert f"kubectl logs -n ml job/{job_name(cache())}" in message
    assert "path" not in status and cache_mount(cache(status)) is None   # no pods yet


def test_a_complete_job_gives_the_commit_bytes_and_path_from_its_termination_message():
    result = {"commit": COMMIT, "bytes": 1_234_567, "files": 9, "path": "models/Qwen--Qwen3-Reranker-0.6B/main"}
    status = build_cache_status(cache(), now=NOW, job=job("Complete"),
                                pods=[pod("Failed", 1, {"reason": "NetworkError", "message": "x"}, created=NOW),
                                      pod("Succeeded", 0, result, created=LATER)], users=["rr"])
    ok, reason, message = cached(status)
    assert (ok, reason) == ("True", "Downloaded")
    assert status["commit"] == COMMIT and status["bytes"] == 1_234_567 and status["files"] == 9
    assert status["path"] == "/models/models/Qwen--Qwen3-Reranker-0.6B/main"
    assert status["nodeName"] == "node-a" and status["users"] == ["rr"]
    assert "1,234,567 bytes in 9 files" in message
    mount = cache_mount(cache(status))
    assert (mount.claim, mount.path, mount.node) == ("modelcache-qwen", status["path"], "node-a")
    # A ReadWriteMany volume pins nothing.
    many = build_cache_status(cache(accessMode="ReadWriteMany"), now=NOW, job=job("Complete"),
                              pods=[pod("Succeeded", 0, result)])
    assert "nodeName" not in many and cache_mount(cache(many, accessMode="ReadWriteMany")).node is None


def test_without_a_termination_message_a_commit_revision_is_its_own_commit():
    """What kwok reports: a pod that succeeded with no message."""
    status = build_cache_status(cache(revision=COMMIT), now=NOW, job=job("Complete"), pods=[pod("Succeeded", 0)])
    assert status["commit"] == COMMIT and "bytes" not in status
    branch = build_cache_status(cache(), now=NOW, job=job("Complete"), pods=[pod("Succeeded", 0)])
    assert "commit" not in branch and cached(branch)[:2] == ("True", "Downloaded")


def test_a_failed_download_says_what_the_downloader_said_and_how_to_retry():
    said = {"reason": "Unauthorized", "message": "the Hub refused the token (401): set hfTokenSecretRef"}
    status = build_cache_status(cache(), now=NOW, job=job("Failed"), pods=[pod("Failed", 2, said)])
    ok, reason, message = cached(status)
    assert (ok, reason) == ("False", "DownloadFailed")
    assert "Unauthorized: the Hub refused the token (401): set hfTokenSecretRef" in message
    assert f"kubectl delete job -n ml {job_name(cache())}" in message
    # No message from the pods: the Job's own reason.
    bare = build_cache_status(cache(), now=NOW, job=job("Failed"), pods=[pod("Failed", 137)])
    assert "backoff limit" in cached(bare)[2]


def test_during_a_revision_change_the_complete_revision_stays_until_the_new_one_is_done():
    done = {"revision": "main", "commit": COMMIT, "path": "/models/models/Qwen--Qwen3-Reranker-0.6B/main",
            "bytes": 10, "files": 1, "nodeName": "node-a",
            "conditions": [{"type": "Cached", "status": "True", "reason": "Downloaded", "message": "m",
                            "lastTransitionTime": NOW}]}
    moving = cache(done, revision="v2")
    assert fetch_revision(moving) == "v2"            # a new revision: asked for by name
    assert fetch_revision(cache(done)) == COMMIT     # the same one again: pinned to its commit
    assert job_name(moving) != job_name(cache(done))
    status = build_cache_status(moving, now=LATER, job=job(), pods=[pod("Running")], users=["rr"])
    ok, reason, message = cached(status)
    assert (ok, reason) == ("False", "Downloading") and "pods keep revision main" in message
    assert cache_mount(cache(status, revision="v2")).path.endswith("/main")
    status = build_cache_status(cache(status, revision="v2"), now=LATER, job=job("Complete"),
                                pods=[pod("Succeeded", 0, {"commit": "b" * 40, "bytes": 20, "files": 2})])
    assert status["path"].endswith("/v2") and status["commit"] == "b" * 40


def test_the_transition_time_moves_only_when_the_condition_does():
    first = build_cache_status(cache(), now=NOW, job=job("Complete"), pods=[pod("Succeeded", 0)])
    again = build_cache_status(cache(first), now=LATER, job=None)
    assert again["conditions"] == first["conditions"]      # same message, lastTransitionTime NOW
    assert again["conditions"][0]["lastTransitionTime"] == NOW


def test_an_unused_cache_with_delete_when_unused_has_no_volume():
    status = build_cache_status(cache(retention="DeleteWhenUnused"), now=NOW, job=None, volume=False)
    assert cached(status)[:2] == ("False", "Unused") and "path" not in status and "claimName" not in status


@pytest.mark.parametrize("name", ["a", "a" * 52])
def test_the_job_name_is_a_label_value(name):
    job_of = build_download_job(cache(name=name), image="op:1")
    assert len(job_of["metadata"]["name"]) <= 63
    assert job_of["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
