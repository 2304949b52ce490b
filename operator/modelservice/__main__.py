"""`python -m modelservice` / `modelservice`: runs the ModelService operator.

Credentials: in-cluster (service account) when running in a pod, else the current kubeconfig
context. By default it serves every namespace; --namespace (repeatable) limits it. Whatever it
watches, it refuses ModelServices in the namespaces of --refused-namespaces (the Kubernetes system
namespaces by default; see scope.py), with a status condition and a Warning Event.
--network-policy gives every ModelService that does not say otherwise an ingress NetworkPolicy
admitting its namespace (--network-policy-same-namespace) and --network-policy-peers.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import kopf

from .controller.scope import SYSTEM_NAMESPACES, parse_namespace_list

if TYPE_CHECKING:
    from .autoscaling.demand import PodAddress


def parse_peers(text: str) -> tuple[dict, ...]:
    """--network-policy-peers: a JSON list of NetworkPolicyPeers, judged as spec.networkPolicy
    .extraIngressFrom is (so a bad one stops the operator at start, not each apply)."""
    from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415

    from .api.models import NetworkPolicyPeer  # noqa: PLC0415

    try:
        peers = TypeAdapter(list[NetworkPolicyPeer]).validate_python(json.loads(text or "[]"))
    except (ValueError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(f"not a JSON list of NetworkPolicyPeers: {exc}") from None
    return tuple(peer.model_dump(by_alias=True, exclude_none=True) for peer in peers)


def parse_names(text: str) -> tuple[str, ...]:
    """NAME,...: the names, in order, without blanks."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_pod_map(field_name: str):
    """--pod-labels / --pod-annotations: a JSON object, judged as spec.pod.<field_name> is (a
    selector label or a bad key stops the operator at start, not each apply)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from .api.models import PodSettings  # noqa: PLC0415

    def parse(text: str) -> dict[str, str]:
        try:
            settings = PodSettings.model_validate({field_name: json.loads(text or "{}")})
        except (ValueError, ValidationError) as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object of pod {field_name}: {exc}") from None
        return dict(getattr(settings, field_name) or {})
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .autoscaling.loop import gateway_urls_of  # noqa: PLC0415
    from .controller.handlers import DEFAULT_RESYNC_S  # noqa: PLC0415  (the one default; handlers imports kopf's registry)

    parser = argparse.ArgumentParser(prog="modelservice", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="serve ModelServices of this namespace (repeatable; glob patterns allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="serve ModelServices of every namespace (the default)")
    parser.add_argument("--refused-namespaces", metavar="NS,...", type=parse_namespace_list,
                        default=SYSTEM_NAMESPACES,
                        help="never serve ModelServices of these namespaces (comma-separated names or "
                             f"glob patterns; empty: none; default: {','.join(SYSTEM_NAMESPACES)})")
    parser.add_argument("--standalone", action="store_true", default=True,
                        help="no peering with other operator instances (always on; accepted for clarity)")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--resync-seconds", type=float, metavar="S",
                        default=float(os.environ.get("MODELSERVICE_RESYNC_SECONDS") or DEFAULT_RESYNC_S),
                        help="compare every ModelService with its children this often, repairing what "
                             "events missed (jittered; env MODELSERVICE_RESYNC_SECONDS; 0: off; "
                             f"default {DEFAULT_RESYNC_S:g})")
    policy = parser.add_argument_group("NetworkPolicy defaults (spec.networkPolicy of a ModelService overrides them)")
    policy.add_argument("--network-policy", action=argparse.BooleanOptionalAction, default=False,
                        help="give each ModelService an ingress NetworkPolicy unless its spec says "
                             "networkPolicy.enabled: false (default: only those whose spec says true)")
    policy.add_argument("--network-policy-same-namespace", action=argparse.BooleanOptionalAction, default=True,
                        help="the policies admit every pod of the ModelService's namespace unless its "
                             "spec says networkPolicy.allowSameNamespace: false (default: yes)")
    policy.add_argument("--network-policy-peers", metavar="JSON", type=parse_peers, default=(),
                        help="a JSON list of NetworkPolicyPeers every policy admits (e.g. the gateway's "
                             "pods, the metrics scraper)")
    parser.add_argument("--gateway-metrics-url", action="append", metavar="URL",
                        default=list(gateway_urls_of(os.environ.get("MODELSERVICE_GATEWAY_METRICS_URLS"))),
                        help="a gateway's /metrics, read for the requests it holds per model (autoscaling "
                             "from zero; repeatable; env MODELSERVICE_GATEWAY_METRICS_URLS, comma-separated)")
    parser.add_argument("--gateway-namespace", metavar="NS", default=os.environ.get("MODELSERVICE_GATEWAY_NAMESPACE"),
                        help="with --gateway-selector: the namespace of the gateway's pods")
    parser.add_argument("--gateway-selector", metavar="LABELS", default=os.environ.get("MODELSERVICE_GATEWAY_SELECTOR"),
                        help="label selector of the gateway's pods, each read at its http port (env "
                             "MODELSERVICE_GATEWAY_SELECTOR)")
    pods = parser.add_argument_group("Pod defaults (a ModelService's spec.pod extends them)")
    pods.add_argument("--image-pull-secrets", metavar="NAME,...", type=parse_names,
                      default=os.environ.get("MODELSERVICE_IMAGE_PULL_SECRETS", ""),
                      help="Secrets (of each ModelService's namespace) that pull the model images and the "
                           "ModelCache download Jobs' image, before those of spec.pod.imagePullSecrets "
                           "(the chart passes its imagePullSecrets; env MODELSERVICE_IMAGE_PULL_SECRETS)")
    pods.add_argument("--pod-labels", metavar="JSON", type=parse_pod_map("labels"), default={},
                      help="a JSON object of labels for every model pod; spec.pod.labels wins on a "
                           "shared key (the chart passes its commonLabels)")
    pods.add_argument("--pod-annotations", metavar="JSON", type=parse_pod_map("annotations"), default={},
                      help="a JSON object of annotations for every model pod; spec.pod.annotations wins "
                           "on a shared key (the chart passes its commonAnnotations)")
    cache = parser.add_argument_group("ModelCache downloads")
    cache.add_argument("--downloader-image", metavar="IMAGE", default=os.environ.get("MODELSERVICE_DOWNLOADER_IMAGE"),
                       help="image of the download Jobs: the operator's own, which holds "
                            "`python -m modelservice.cache.download` (env MODELSERVICE_DOWNLOADER_IMAGE; the chart "
                            "sets it)")
    cache.add_argument("--hf-endpoint", metavar="URL", default=os.environ.get("MODELSERVICE_HF_ENDPOINT"),
                       help="the Hub the download Jobs fetch from (their HF_ENDPOINT), e.g. a mirror; "
                            "unset: huggingface.co (env MODELSERVICE_HF_ENDPOINT)")
    parser.add_argument("--gpu-sharing", choices=("dra", "devicePlugin", "off"),
                        default=os.environ.get("MODELSERVICE_GPU_SHARING", "dra"),
                        help="how a ModelService with gpu.sharing.mode Shared asks for its share of a "
                             "GPU: dra (a ResourceClaim per pod with a memory capacity request, "
                             "NVIDIA DRA driver), devicePlugin (nvidia.com/gpu.shared), or off "
                             "(refused); env MODELSERVICE_GPU_SHARING (default dra)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, pod_address: PodAddress | None = None) -> int:
    """Runs the operator until it is stopped; its autoscaler reads each pod's metrics at the
    address `pod_address` gives (default: the pod's own, autoscaling.demand.pod_address)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .cache import handlers as cache_handlers  # noqa: F401  (registers the handlers)
    from .controller import handlers  # noqa: F401
    from .placement.builders import NetworkPolicyDefaults, PodDefaults  # noqa: PLC0415
    from .placement.sharing import SharingMechanism  # noqa: PLC0415

    logging.getLogger(__name__).info(
        "serving ModelServices of %s; refusing those of: %s",
        ", ".join(args.namespace) if args.namespace else "every namespace",
        ", ".join(args.refused_namespaces) or "no namespace")

    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(refused_namespaces=tuple(args.refused_namespaces),
                       resync_seconds=args.resync_seconds,
                       network_policy=NetworkPolicyDefaults(
                           enabled=args.network_policy,
                           allow_same_namespace=args.network_policy_same_namespace,
                           peers=args.network_policy_peers),
                       pod_defaults=PodDefaults(image_pull_secrets=tuple(args.image_pull_secrets),
                                                labels=args.pod_labels, annotations=args.pod_annotations),
                       gateway_metrics_urls=tuple(args.gateway_metrics_url),
                       gateway_namespace=args.gateway_namespace, gateway_selector=args.gateway_selector,
                       pod_address=pod_address,
                       gpu_sharing=SharingMechanism(args.gpu_sharing),
                       download=cache_handlers.DownloadSettings(
                           image=args.downloader_image, hf_endpoint=args.hf_endpoint,
                           pull_secrets=tuple(args.image_pull_secrets))),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
