"""The only module that talks to the Kubernetes API.

Children are written with server-side apply under one fixed field manager, forcing conflicts, so
a reconcile is idempotent, takes back fields someone edited by hand and never trips on a 409.
Objects come back as plain dicts (the API's JSON), the shape the pure build_* functions use.
The operator makes one `Kube` at start-up and hands it to the handlers through kopf's memo.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import kubernetes
from kubernetes.client.exceptions import ApiException

from ..api.models import CACHE_PLURAL, GROUP, MANAGER, PLURAL, VERSION

APPLY = "application/apply-patch+yaml"   # JSON is YAML: the client sends the dict as JSON
JSON_PATCH = "application/json-patch+json"


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the current kubeconfig context."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


# The longest API message kept in a status condition or an Event (a refused list can be long).
MESSAGE_MAX = 1024


@dataclass(frozen=True)
class ApiFailure:
    """Why the API refused a request: its HTTP status, its Status reason and message."""

    status: int
    reason: str
    message: str


def api_failure(exc: ApiException) -> ApiFailure:
    """The API's own account of a refused request (its Status object), or the HTTP status line
    when the body is not a Status (a proxy, a dropped connection)."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if not isinstance(body, dict):
        body = {}
    message = " ".join(str(body.get("message") or exc.reason or "no message").split())
    if len(message) > MESSAGE_MAX:
        message = message[:MESSAGE_MAX - 3] + "..."
    return ApiFailure(status=int(exc.status or 0), reason=str(body.get("reason") or exc.reason or ""),
                      message=message)


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def _missing_is_none(read: Any) -> dict[str, Any] | None:
    """What `read()` returns, or None when the API answers 404 (the object does not exist)."""
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class Kube:
    """Typed access to the few API calls the operator makes."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None):
        self.client = api_client or kubernetes.client.ApiClient()
        self.client.user_agent = f"{MANAGER}/{self.client.user_agent}"
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.networking = kubernetes.client.NetworkingV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a Deployment, Service, NetworkPolicy, PersistentVolumeClaim or Job;
        returns the live object."""
        meta = obj["metadata"]
        kwargs = dict(name=meta["name"], namespace=meta["namespace"], body=dict(obj),
                      field_manager=MANAGER, force=True, _content_type=APPLY,
                      _preload_content=False)
        if obj["kind"] == "Deployment":
            return _json(self.apps.patch_namespaced_deployment(**kwargs))
        if obj["kind"] == "Service":
            return _json(self.core.patch_namespaced_service(**kwargs))
        if obj["kind"] == "NetworkPolicy":
            return _json(self.networking.patch_namespaced_network_policy(**kwargs))
        if obj["kind"] == "PersistentVolumeClaim":
            return _json(self.core.patch_namespaced_persistent_volume_claim(**kwargs))
        if obj["kind"] == "Job":
            return _json(self.batch.patch_namespaced_job(**kwargs))
        if obj["kind"] == "ResourceClaimTemplate":
            return _json(self.custom.patch_namespaced_custom_object(
                "resource.k8s.io", "v1", meta["namespace"], "resourceclaimtemplates", meta["name"], dict(obj),
                field_manager=MANAGER, force=True, _content_type=APPLY, _preload_content=False))
        raise ValueError(f"the operator does not apply {obj['kind']}")

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False)))

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.core.read_namespaced_service(name, namespace, _preload_content=False)))

    def get_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.networking.read_namespaced_network_policy(name, namespace, _preload_content=False)))

    def delete_network_policy(self, namespace: str, name: str, uid: str) -> None:
        """Deletes a NetworkPolicy only while it is the object `uid` names (a precondition), so
        one created again meanwhile under the same name is left alone; gone already is fine."""
        try:
            self.networking.delete_namespaced_network_policy(
                name, namespace, body=kubernetes.client.V1DeleteOptions(
                    preconditions=kubernetes.client.V1Preconditions(uid=uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods of one ModelService (`selector`: its pod selector), read only to report
        why some are Pending."""
        return _json(self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                   _preload_content=False)).get("items", [])

    def get_modelservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _preload_content=False)))

    def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, CACHE_PLURAL, name, _preload_content=False)))

    def list_modelcaches(self, namespace: str) -> list[dict[str, Any]]:
        return _json(self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, CACHE_PLURAL, _preload_content=False)).get("items", [])

    def list_modelservices(self, namespace: str) -> list[dict[str, Any]]:
        return _json(self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _preload_content=False)).get("items", [])

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.core.read_namespaced_persistent_volume_claim(
            name, namespace, _preload_content=False)))

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _missing_is_none(lambda: _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False)))

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return _json(self.batch.list_namespaced_job(namespace, label_selector=selector,
                                                    _preload_content=False)).get("items", [])

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes a Job (with its pods) or a PersistentVolumeClaim; gone already is fine."""
        body = kubernetes.client.V1DeleteOptions(propagation_policy="Background")
        try:
            if kind == "Job":
                self.batch.delete_namespaced_job(name, namespace, body=body)
            elif kind == "PersistentVolumeClaim":
                self.core.delete_namespaced_persistent_volume_claim(name, namespace, body=body)
            else:
                raise ValueError(f"the operator does not delete {kind}")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_claim_templates(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The ResourceClaimTemplates of one ModelService (`selector`: its pod selector)."""
        return self.custom.list_namespaced_custom_object(
            "resource.k8s.io", "v1", namespace, "resourceclaimtemplates", label_selector=selector).get("items", [])

    def delete_claim_template(self, namespace: str, name: str) -> None:
        """Deletes a ResourceClaimTemplate (claims made from it stay with their pods); gone is fine."""
        try:
            self.custom.delete_namespaced_custom_object("resource.k8s.io", "v1", namespace,
                                                        "resourceclaimtemplates", name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def replace_cache_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Writes a ModelCache's whole status (as replace_status does a ModelService's)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, CACHE_PLURAL, name, [{"op": "add", "path": "/status", "value": dict(status)}],
            _content_type=JSON_PATCH, _preload_content=False)

    def advertise_node_resource(self, name: str, resource: str, value: int) -> None:
        """Sets an extended resource's capacity and allocatable on a node's status (a JSON patch,
        as the API documents for advertising one; a kubelet would copy the capacity to allocatable
        itself, a simulated node has none)."""
        key = resource.replace("~", "~0").replace("/", "~1")
        self.core.patch_node_status(name, [{"op": "add", "path": f"/status/{part}/{key}", "value": str(value)}
                                           for part in ("capacity", "allocatable")])

    def list_nodes(self) -> list[dict[str, Any]]:
        return _json(self.core.list_node(_preload_content=False)).get("items", [])

    def replace_status(self, namespace: str, name: str, status: Mapping[str, Any],
                       resource_version: str | None = None) -> None:
        """Writes the whole status (a JSON patch on the status subresource, so fields the new
        status no longer has, such as an old nodeSelector, disappear). With `resource_version`,
        only over that version of the object (else 409 Conflict): for writers that read it a while
        ago and must not put an older generation's status back."""
        patch: list[dict[str, Any]] = [{"op": "add", "path": "/status", "value": dict(status)}]
        if resource_version is not None:
            patch.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version})
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, patch,
            _content_type=JSON_PATCH, _preload_content=False)

    def scale(self, namespace: str, name: str, replicas: int, expected: int) -> bool:
        """Sets spec.replicas of a ModelService to `replicas` if it still is `expected` (a JSON
        patch whose test fails otherwise: a count someone else wrote meanwhile is decided on
        again, not overwritten blindly). Returns whether it wrote."""
        patch = [{"op": "test", "path": "/spec/replicas", "value": expected},
                 {"op": "replace", "path": "/spec/replicas", "value": replicas}]
        try:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch,
                                                       _content_type=JSON_PATCH, _preload_content=False)
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
        return True

    def set_autoscaling_status(self, namespace: str, name: str, value: Mapping[str, Any]) -> None:
        """Writes status.autoscaling alone (the rest of the status is the reconcile's)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name,
            [{"op": "add", "path": "/status/autoscaling", "value": dict(value)}],
            _content_type=JSON_PATCH, _preload_content=False)

    def post_event(self, body: Mapping[str, Any], reason: str, message: str, now: str,
                   type_: str = "Normal") -> None:
        """A core/v1 Event about a ModelService (from threads kopf's own posting cannot serve)."""
        meta = body["metadata"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:MESSAGE_MAX], "type": type_,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": MANAGER}, "reportingComponent": MANAGER,
        }
        self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
