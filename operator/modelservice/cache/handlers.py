"""kopf handlers of ModelCache: the claim, the download Job, the status, and the ModelServices
that wait for it.

* A ModelCache is created, changed, or seen again after a restart, or one of its Jobs changes:
  `reconcile_cache()` applies the claim, runs the Job of the spec's revision unless that revision
  is already complete on the volume, deletes the Jobs of other revisions (a revision change
  stops the old download; once the new one is complete, the old Job goes too) and writes the
  status (cache.build_cache_status) when it changed.
* When the complete revision changes (status.path, or the node of a ReadWriteOnce volume), every
  ModelService naming the cache is reconciled at once: a waiting one gets its Deployment, a
  running one rolls to the new revision. Before that, they have no pods (ModelCacheNotReady).
* A ModelService event (created, changed, deleted) reconciles the caches it names or named
  (status.users): with retention DeleteWhenUnused, the last user's deletion deletes the volume,
  and the first user of an unused cache starts its download.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.models import (
    CACHE_PLURAL,
    GROUP,
    PLURAL,
    VERSION,
    ModelCache,
    build_condition,
    parse_modelcache,
)
from ..controller.handlers import (
    ApplyFailed,
    gpu_sharing,
    network_policy_defaults,
    pod_defaults,
    reconcile,
)
from ..controller.kube import Kube, api_failure
from ..controller.scope import SYSTEM_NAMESPACES, namespace_refusal
from .builders import (
    CACHE_LABEL,
    build_cache_status,
    build_claim,
    build_download_job,
    claim_name,
    is_complete,
    job_name,
)

log = logging.getLogger(__name__)
# What a ModelService pod mounts from a cache: a change rolls the users.
MOUNT_FIELDS = ("path", "nodeName", "claimName")


@dataclass(frozen=True)
class DownloadSettings:
    """The download Jobs' image (the operator's own: --downloader-image), the Secrets that pull it
    (--image-pull-secrets, as the model pods') and the Hub's address (--hf-endpoint, for a mirror; unset:
    huggingface.co)."""

    image: str | None = None
    hf_endpoint: str | None = None
    pull_secrets: tuple[str, ...] = ()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cache_users(kube: Kube, namespace: str, name: str) -> list[str]:
    """The ModelServices of the namespace that name the cache (and are not being deleted)."""
    return sorted(body["metadata"]["name"] for body in kube.list_modelservices(namespace)
                  if _named_cache(body) == name and not body["metadata"].get("deletionTimestamp"))


def _named_cache(body: Mapping[str, Any]) -> str | None:
    return (((body.get("spec") or {}).get("cache") or {}).get("modelCache"))


def _invalid_status(body: Mapping[str, Any], message: str, reason: str = "InvalidSpec") -> dict[str, Any]:
    """A cache the operator does not act on: the status it had, with Cached False and why."""
    old = body.get("status") or {}
    old_cond = next((c for c in old.get("conditions") or [] if c.get("type") == "Cached"), None)
    status = {k: v for k, v in old.items() if k != "conditions"}
    generation = body["metadata"].get("generation")
    if generation is not None:
        status["observedGeneration"] = generation
    status["conditions"] = [build_condition("Cached", False, reason, message, generation, old_cond, now())]
    return status


def reconcile_cache(kube: Kube, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter,
                    settings: DownloadSettings) -> dict[str, Any]:
    """Makes the claim, the Job and the status match the ModelCache; returns the status."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        cache = parse_modelcache(body)
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        status = _invalid_status(body, message)
        if status != (body.get("status") or {}):
            kube.replace_cache_status(namespace, name, status)
        raise kopf.PermanentError(f"InvalidSpec: {message}") from exc
    users = cache_users(kube, namespace, name)
    jobs = kube.list_jobs(namespace, f"{CACHE_LABEL}={name}")
    claim = kube.get_claim(namespace, claim_name(name))
    current = job_name(cache)
    if cache.spec.retention == "DeleteWhenUnused" and not users:
        for job in jobs:
            kube.delete("Job", namespace, job["metadata"]["name"])
        if claim is not None:
            logger.info("ModelCache %s/%s: no ModelService names it; deleting its volume (retention "
                        "DeleteWhenUnused)", namespace, name)
            kube.delete("PersistentVolumeClaim", namespace, claim_name(name))
        return _write(kube, cache, build_cache_status(cache, now=now(), job=None, users=users, volume=False))
    if claim is None and cache.status.get("claimName"):
        # The volume is gone (deleted by hand, or by DeleteWhenUnused): nothing on it counts, and a
        # Job that completed for it would read as complete.
        logger.info("ModelCache %s/%s: its volume is gone; fetching again", namespace, name)
        for job in jobs:
            kube.delete("Job", namespace, job["metadata"]["name"])
        jobs = []
        cache = ModelCache(cache.name, cache.namespace, cache.spec, cache.generation, cache.uid,
                           {k: v for k, v in cache.status.items() if k == "conditions"})
    try:
        desired = build_claim(cache)
        kopf.adopt([desired], owner=body)  # type: ignore[arg-type]
        kube.apply(desired)
    except ApiException as exc:
        failure = api_failure(exc)
        raise ApplyFailed("PersistentVolumeClaim", failure) from None
    live_jobs = {job["metadata"]["name"]: job for job in jobs}
    for other in set(live_jobs) - {current}:
        # Another revision's Job: stopped when still running (the spec moved on), removed once done
        # (the spec's revision is complete, or a new one is fetched).
        logger.info("ModelCache %s/%s: deleting Job %s of an earlier revision", namespace, name, other)
        kube.delete("Job", namespace, other)
    job = live_jobs.get(current)
    if job is None and not is_complete(cache):
        if settings.image is None:
            return _write(kube, cache, _no_image_status(cache))
        desired = build_download_job(cache, image=settings.image, hf_endpoint=settings.hf_endpoint,
                                     pull_secrets=settings.pull_secrets)
        kopf.adopt([desired], owner=body)  # type: ignore[arg-type]
        try:
            job = kube.apply(desired)
        except ApiException as exc:
            raise ApplyFailed("Job", api_failure(exc)) from None
        logger.info("ModelCache %s/%s: Job %s fetches %s@%s", namespace, name, current, cache.spec.model,
                    cache.spec.revision)
    pods = kube.list_pods(namespace, f"batch.kubernetes.io/job-name={current}") if job is not None else []
    return _write(kube, cache, build_cache_status(cache, now=now(), job=job, pods=pods, users=users))


def _no_image_status(cache: ModelCache) -> dict[str, Any]:
    status = build_cache_status(cache, now=now(), job=None)
    status["conditions"][0].update(status="False", reason="DownloadFailed",
                                   message="the operator has no --downloader-image (chart: operator.image), "
                                           "so it cannot run download Jobs")
    return status


def _write(kube: Kube, cache: ModelCache, status: dict[str, Any]) -> dict[str, Any]:
    if status != dict(cache.status):
        kube.replace_cache_status(cache.namespace or "default", cache.name, status)
    return status


def roll_users(kube: Kube, namespace: str, old: Mapping[str, Any], new: Mapping[str, Any],
               logger: logging.Logger | logging.LoggerAdapter, memo: Mapping[str, Any]) -> None:
    """Reconciles the cache's users when what their pods mount changed (see the module docstring)."""
    if all(old.get(k) == new.get(k) for k in MOUNT_FIELDS):
        return
    for user in new.get("users") or []:
        body = kube.get_modelservice(namespace, user)
        if body is None:
            continue
        try:
            reconcile(kube, body, logger, network_policy_defaults(memo), pod_defaults(memo),  # type: ignore[arg-type]
                      gpu_sharing(memo))
        except (kopf.TemporaryError, kopf.PermanentError, ApplyFailed, ApiException) as exc:
            logger.warning("ModelService %s/%s after its cache changed: %s (its own handler retries)",
                           namespace, user, exc)


def _settings(memo: Mapping[str, Any]) -> DownloadSettings:
    return memo.get("download") or DownloadSettings()


def _run(kube: Kube, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter,
         memo: Mapping[str, Any]) -> None:
    old = dict(body.get("status") or {})
    status = reconcile_cache(kube, body, logger, _settings(memo))
    roll_users(kube, body["metadata"]["namespace"], old, status, logger, memo)


@kopf.on.resume(GROUP, VERSION, CACHE_PLURAL)
@kopf.on.create(GROUP, VERSION, CACHE_PLURAL)
@kopf.on.update(GROUP, VERSION, CACHE_PLURAL)
def reconcile_modelcache(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int = 0,
                         **_: Any) -> None:
    refusal = namespace_refusal(body["metadata"]["namespace"], memo.get("refused_namespaces", SYSTEM_NAMESPACES))
    if refusal is not None:  # no claim or Job in a refused namespace
        status = _invalid_status(body, refusal.message, refusal.reason)
        if status != (body.get("status") or {}):
            memo.kube.replace_cache_status(body["metadata"]["namespace"], body["metadata"]["name"], status)
        kopf.warn(body, reason=refusal.reason, message=refusal.message)
        return
    try:
        _run(memo.kube, body, logger, memo)
    except ApplyFailed as failure:
        kopf.warn(body, reason="ApplyFailed", message=failure.message)
        raise kopf.TemporaryError(f"ApplyFailed: {failure.message}", delay=min(300, 5 * 2 ** min(retry, 6))) from None


def _reconcile_named(kube: Kube, namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter,
                     memo: Mapping[str, Any]) -> None:
    if namespace_refusal(namespace, memo.get("refused_namespaces", SYSTEM_NAMESPACES)) is not None:
        return
    body = kube.get_modelcache(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    try:
        _run(kube, body, logger, memo)
    except (kopf.PermanentError, ApplyFailed, ApiException) as exc:
        logger.warning("ModelCache %s/%s: %s (its own handler retries)", namespace, name, exc)


@kopf.on.event("batch", "v1", "jobs", labels={CACHE_LABEL: kopf.PRESENT})
def download_job_event(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A download Job started, finished or failed (or went away): the cache's status follows."""
    meta = body["metadata"]
    _reconcile_named(memo.kube, meta["namespace"], meta["labels"][CACHE_LABEL], logger, memo)


@kopf.on.event(GROUP, VERSION, PLURAL)
def modelservice_cache_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo,
                             logger: logging.Logger, **_: Any) -> None:
    """A ModelService appeared, changed or went: the caches it names, or was a user of, recount
    their users (DeleteWhenUnused acts on the count)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if namespace_refusal(namespace, memo.get("refused_namespaces", SYSTEM_NAMESPACES)) is not None:
        return  # nothing is read or applied in a refused namespace
    named = None if event.get("type") == "DELETED" else _named_cache(body)
    try:
        caches = memo.kube.list_modelcaches(namespace)
    except ApiException as exc:
        logger.warning("could not list the ModelCaches of %s: %s", namespace, exc.reason)
        return
    for cache in caches:
        cache_name = cache["metadata"]["name"]
        listed = name in ((cache.get("status") or {}).get("users") or [])
        if (cache_name == named) != listed:
            _reconcile_named(memo.kube, namespace, cache_name, logger, memo)
