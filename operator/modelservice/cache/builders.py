"""The children and the status of a ModelCache, built purely.

A ModelCache owns a PersistentVolumeClaim (`build_claim`) and, while its revision is not complete
on the volume, a download Job (`build_download_job`) that runs `python -m modelservice.cache.download`
(download.py) from the operator's own image. The Job writes what it fetched (commit, bytes, files)
or why it failed into its container's termination message; `build_cache_status` reads it back
from the Job's pods. The volume's layout is download.py's: `model_path(model, revision)` under
the mount point, the same path for the Job and for the ModelService pods (CacheMount).

The Cached condition:
  Downloading     the Job of the spec's revision runs (or is about to); an earlier revision
                  that is complete stays in status.path, and pods keep it until this one is done
  DownloadFailed  the Job failed for good (a permanent error, or its retries ran out): the
                  message is the downloader's, saying what to fix
  Unused          retention DeleteWhenUnused and no ModelService names the cache: no volume
  Downloaded      (True) the spec's revision is complete: status.path, commit, bytes, files
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..api.models import DEFAULT_HF_TOKEN_KEY, MANAGER, ModelCache, build_condition
from .download import model_path

CACHE_LABEL = "serving.embedding-images.io/modelcache"
MOUNT_PATH = "/models"
CONTAINER = "download"
# Exit status of the downloader for failures a retry cannot mend (download.py); the Job fails at
# once on it (podFailurePolicy) instead of retrying backoffLimit times.
PERMANENT_EXIT = 2
BACKOFF_LIMIT = 6
JOB_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
RUN_AS = 1000
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                              "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
COMMIT = re.compile(r"^[0-9a-f]{40}$")

DOWNLOADING = "Downloading"
DOWNLOAD_FAILED = "DownloadFailed"
DOWNLOADED = "Downloaded"
UNUSED = "Unused"


@dataclass(frozen=True)
class CacheMount:
    """What a ModelService's pods mount: the cache's claim, read-only at MOUNT_PATH, the files'
    directory there, and (ReadWriteOnce) the one node that may mount it."""

    name: str          # the ModelCache
    claim: str
    path: str          # absolute, under MOUNT_PATH
    node: str | None = None

    def as_status(self) -> dict[str, Any]:
        fields = {"name": self.name, "claimName": self.claim, "path": self.path}
        if self.node:
            fields["nodeName"] = self.node
        return fields

    @classmethod
    def from_status(cls, fields: Mapping[str, Any] | None) -> "CacheMount | None":
        if not fields:
            return None
        return cls(fields["name"], fields["claimName"], fields["path"], fields.get("nodeName"))


def claim_name(cache_name: str) -> str:
    return f"modelcache-{cache_name}"


def job_name(cache: ModelCache) -> str:
    """<cache>-<10 hex of what is fetched>: a revision (or token Secret) change is a new Job; the
    same one is never run twice at once."""
    spec = cache.spec
    ref = spec.hf_token_secret_ref
    key = json.dumps([spec.model, spec.revision, ref.name if ref else None, ref.key if ref else None])
    return f"{cache.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def build_labels(cache: ModelCache) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "embedding-images",
        "app.kubernetes.io/instance": cache.name,
        "app.kubernetes.io/component": "model-cache",
        "app.kubernetes.io/part-of": "embedding-images",
        "app.kubernetes.io/managed-by": MANAGER,
        CACHE_LABEL: cache.name,
    }


def _metadata(cache: ModelCache, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": build_labels(cache)}
    if cache.namespace:
        metadata["namespace"] = cache.namespace
    return metadata


def build_claim(cache: ModelCache) -> dict[str, Any]:
    """The cache's PersistentVolumeClaim."""
    spec: dict[str, Any] = {"accessModes": [cache.spec.access_mode],
                            "resources": {"requests": {"storage": str(cache.spec.size)}}}
    if cache.spec.storage_class_name:
        spec["storageClassName"] = cache.spec.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(cache, claim_name(cache.name)), "spec": spec}


def fetch_revision(cache: ModelCache) -> str:
    """The revision the Job asks for: the commit the spec's revision resolved to once known
    (a branch that moved upstream since is not followed), else the spec's revision."""
    status = cache.status
    if status.get("revision") == cache.spec.revision and status.get("commit"):
        return status["commit"]
    return cache.spec.revision


def build_download_job(cache: ModelCache, *, image: str, hf_endpoint: str | None = None,
                       pull_secrets: Sequence[str] = ()) -> dict[str, Any]:
    """The download Job of the cache's revision (see the module docstring); `pull_secrets` name
    the Secrets (in the cache's namespace) that pull the operator's image when it is private."""
    spec = cache.spec
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": hf_endpoint})
    if spec.hf_token_secret_ref is not None:
        ref = spec.hf_token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": ref.name, "key": ref.key or DEFAULT_HF_TOKEN_KEY}}})
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-m", "modelservice.cache.download"],
        "args": ["--model", spec.model, "--revision", fetch_revision(cache), "--dir", MOUNT_PATH],
        "env": env,
        "resources": copy.deepcopy(JOB_RESOURCES),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "models", "mountPath": MOUNT_PATH},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim_name(cache.name)}},
                    {"name": "tmp", "emptyDir": {}}],
    }
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    metadata = _metadata(cache, job_name(cache))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # A transient failure (network, the Hub's 5xx) is retried by a new pod, which resumes
            # the files already fetched; a permanent one fails the Job at once.
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": CONTAINER, "operator": "In", "values": [PERMANENT_EXIT]}}]},
            "template": {"metadata": {"labels": dict(metadata["labels"])}, "spec": pod},
        },
    }


def _job_condition(job: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def _termination(pod: Mapping[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """The downloader container's exit code and its termination message, parsed (a message that
    is not the downloader's JSON is kept as `message`)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        text = (terminated.get("message") or "").strip()
        try:
            result = json.loads(text) if text else {}
        except ValueError:
            result = {"message": text}
        return terminated.get("exitCode"), result if isinstance(result, dict) else {"message": text}
    return None, {}


def _newest_first(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)


# Status fields that describe the complete revision on the volume: carried over while another
# one downloads, dropped when the volume goes.
COMPLETE_FIELDS = ("revision", "commit", "path", "bytes", "files", "nodeName")


def is_complete(cache: ModelCache) -> bool:
    """Whether the status says the spec's revision is complete on the volume."""
    return cache.status.get("revision") == cache.spec.revision and bool(cache.status.get("path"))


def build_cache_status(cache: ModelCache, *, now: str, job: Mapping[str, Any] | None,
                       pods: Sequence[Mapping[str, Any]] = (), users: Sequence[str] = (),
                       volume: bool = True) -> dict[str, Any]:
    """The status of a cache from its download Job (None: none runs) and that Job's pods, the
    ModelServices that name it and whether its volume exists (`volume` False: it was deleted,
    so nothing on it counts any more)."""
    spec = cache.spec
    old = cache.status
    old_cond = next((c for c in old.get("conditions") or [] if c.get("type") == "Cached"), {})
    status: dict[str, Any] = {}
    if cache.generation is not None:
        status["observedGeneration"] = cache.generation
    if volume:
        status.update({k: old[k] for k in COMPLETE_FIELDS if k in old})
        status["claimName"] = claim_name(cache.name)
    name = job_name(cache)
    target = f"{spec.model}@{spec.revision}"
    logs = f"kubectl logs -n {cache.namespace or 'default'} job/{name}"

    def cond(ok: bool, reason: str, message: str) -> dict[str, Any]:
        return build_condition("Cached", ok, reason, message, cache.generation, old_cond, now)

    if spec.retention == "DeleteWhenUnused" and not users:
        condition = cond(False, UNUSED, "no ModelService names this cache; with retention DeleteWhenUnused "
                                        "its volume is deleted, and fetched again when one does")
    elif volume and is_complete(cache) and job is None:
        condition = cond(True, DOWNLOADED, old_cond.get("message") or f"{target} is on the volume")
    elif _job_condition(job, "Complete") is not None:
        status["job"] = name
        succeeded = [p for p in _newest_first(pods) if (p.get("status") or {}).get("phase") == "Succeeded"]
        result = _termination(succeeded[0])[1] if succeeded else {}
        commit = result.get("commit") or (spec.revision if COMMIT.match(spec.revision) else None)
        status.update({"revision": spec.revision, "path": f"{MOUNT_PATH}/{model_path(spec.model, spec.revision)}"})
        for key in ("commit", "bytes", "files", "nodeName"):
            status.pop(key, None)
        if commit:
            status["commit"] = commit
        for key in ("bytes", "files"):
            if isinstance(result.get(key), int):
                status[key] = result[key]
        node = ((succeeded[0].get("spec") or {}).get("nodeName") if succeeded else None)
        if spec.access_mode == "ReadWriteOnce" and node:
            status["nodeName"] = node
        size = f", {status['bytes']:,} bytes in {status.get('files', '?')} files" if "bytes" in status else ""
        condition = cond(True, DOWNLOADED, f"{target} is on the volume (commit {commit or 'unknown'}{size})")
    elif _job_condition(job, "Failed") is not None:
        status["job"] = name
        failed = _job_condition(job, "Failed") or {}
        reason = message = None
        for pod in _newest_first(pods):
            code, result = _termination(pod)
            if code not in (None, 0) and result.get("message"):
                reason, message = result.get("reason"), result["message"]
                break
        text = (f"{reason}: {message}" if reason else message) or failed.get("message") or failed.get("reason", "")
        condition = cond(False, DOWNLOAD_FAILED,
                         f"the download of {target} failed: {text} (after a fix, `kubectl delete job -n "
                         f"{cache.namespace or 'default'} {name}` retries it; files already fetched are kept)")
    else:
        status["job"] = name
        serving = f"; pods keep revision {status['revision']} until it is complete" if status.get("path") else ""
        condition = cond(False, DOWNLOADING, f"Job {name} is fetching {target} (progress: {logs}){serving}")
    status["conditions"] = [condition]
    if users:
        status["users"] = sorted(users)
    return status


def cache_mount(cache: ModelCache) -> CacheMount | None:
    """Where the pods of a ModelService using `cache` find its files, or None while no revision is
    complete on the volume (the ModelService then gets no pods yet)."""
    status = cache.status
    if not status.get("path"):
        return None
    node = status.get("nodeName") if cache.spec.access_mode == "ReadWriteOnce" else None
    return CacheMount(cache.name, claim_name(cache.name), status["path"], node)
