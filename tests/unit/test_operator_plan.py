"""Engine/model compatibility and the GPU architecture choice for accelerator auto."""
from __future__ import annotations

import pytest

from modelservice.placement import plan as planning
from modelservice.api.models import parse_spec
from modelservice.placement.plan import PlanError, build_plan, choose_gpu_nodes, resolve_engine

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# (product label, compute major, minor) as GPU Feature Discovery labels these GPUs.
GPUS = {
    "T4": ("Tesla-T4", "7", "5"),
    "A10": ("NVIDIA-A10", "8", "6"),
    "A100": ("NVIDIA-A100-SXM4-80GB", "8", "0"),
    "L4": ("NVIDIA-L4", "8", "9"),
    "L40S": ("NVIDIA-L40S", "8", "9"),
    "H100": ("NVIDIA-H100-80GB-HBM3", "9", "0"),
    "H200": ("NVIDIA-H200", "9", "0"),
    "B200": ("NVIDIA-B200", "10", "0"),
}


def node(name, product=None, major=None, minor=None, gpus=1, taints=(GPU_TAINT,), unschedulable=False,
         labels=None):
    meta_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if product:
        meta_labels["nvidia.com/gpu.product"] = product
    if major is not None:
        meta_labels["nvidia.com/gpu.compute.major"] = major
        meta_labels["nvidia.com/gpu.compute.minor"] = minor
    allocatable = {"cpu": "8", "memory": "32Gi"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {"metadata": {"name": name, "labels": meta_labels},
            "spec": {"taints": list(taints) if gpus else [], "unschedulable": unschedulable},
            "status": {"allocatable": allocatable}}


def gpu_node(kind, gpus=1, **kw):
    product, major, minor = GPUS[kind]
    return node(f"gpu-{kind.lower()}", product, major, minor, gpus=gpus, **kw)


CPU_NODES = [node("cpu-1", gpus=0), node("cpu-2", gpus=0)]


@pytest.mark.parametrize("kind, variant, image_tag", [
    ("T4", "turing", "turing-1.9"),
    ("A10", "ampere-86", "86-1.9"),
    ("A100", "ampere-80", "1.9"),
    ("L4", "ada", "89-1.9"),
    ("L40S", "ada", "89-1.9"),
    ("H100", "hopper", "hopper-1.9"),
    ("H200", "hopper", "hopper-1.9"),
    ("B200", "blackwell-100", "100-1.9"),
])
def test_auto_picks_the_image_built_for_the_only_gpu_in_the_cluster(kind, variant, image_tag):
    spec = parse_spec({"task": "embed", "model": "BAAI/bge-small-en-v1.5"})
    plan = build_plan(spec, [*CPU_NODES, gpu_node(kind)])
    _, major, minor = GPUS[kind]
    assert plan.variant == variant
    assert plan.image == f"ghcr.io/huggingface/text-embeddings-inference:{image_tag}"
    assert plan.node_selector == {"nvidia.com/gpu.compute.major": major,
                                  "nvidia.com/gpu.compute.minor": minor}
    assert plan.gpu_count == 1


@pytest.mark.parametrize("kind", sorted(GPUS))
def test_a_named_product_maps_directly_without_nodes(kind):
    product, major, minor = GPUS[kind]
    spec = parse_spec({"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "gpu": {"product": product}})
    plan = build_plan(spec)
    assert plan.node_selector == {"nvidia.com/gpu.product": product}
    assert f"{major}.{minor}" in planning.load_table().by_name(plan.variant).compute_capabilities
    assert plan.image == "ghcr.io/embedding-images/reranker:0.1.0-cuda"


def test_unknown_product_without_compute_labels_is_refused_with_the_known_ones():
    spec = parse_spec({"task": "embed", "model": "m", "gpu": {"product": "NVIDIA-X9000"}})
    with pytest.raises(PlanError) as info:
        build_plan(spec, [*CPU_NODES, node("x", "NVIDIA-X9000")])
    assert info.value.reason == "UnknownGPUProduct"
    assert "NVIDIA-L4" in info.value.message


def test_unknown_product_with_compute_labels_uses_the_labels():
    spec = parse_spec({"task": "embed", "model": "m", "gpu": {"product": "NVIDIA-RTX-4000-Ada"}})
    plan = build_plan(spec, [node("x", "NVIDIA-RTX-4000-Ada", "8", "9")])
    assert plan.variant == "ada" and plan.node_selector == {"nvidia.com/gpu.product": "NVIDIA-RTX-4000-Ada"}


def test_unknown_gpu_in_the_cluster_is_never_chosen():
    # a GPU with an unknown product and no compute labels, and one whose capability no image serves
    nodes = [node("mystery", "NVIDIA-Mystery"), node("volta", "Tesla-V100-SXM2-16GB", "7", "0")]
    assert choose_gpu_nodes(nodes, gpu_count=1, replicas=1) is None
    spec = parse_spec({"task": "embed", "model": "m"})
    with pytest.raises(PlanError) as info:
        build_plan(spec, nodes)
    assert info.value.reason == "NoMatchingGPUNodes" and info.value.retry


def test_no_gpu_node_falls_back_to_cpu_when_asked():
    spec = parse_spec({"task": "embed", "model": "m", "fallbackToCPU": True})
    plan = build_plan(spec, CPU_NODES)
    assert (plan.variant, plan.gpu_count, plan.node_selector, plan.fell_back_to_cpu) == ("cpu", 0, {}, True)
    assert plan.image.endswith(":cpu-1.9")


def test_capacity_is_replicas_times_gpus_per_pod():
    nodes = [gpu_node("H100", gpus=8), gpu_node("L4", gpus=1)]
    # 8 pods of one GPU: only the H100 node holds them
    choice = choose_gpu_nodes(nodes, gpu_count=1, replicas=8)
    assert choice.variant.name == "hopper" and choice.capacity == 8
    # 3 pods of 4 GPUs need 12 GPUs: nobody
    assert choose_gpu_nodes(nodes, gpu_count=4, replicas=3) is None
    # 2 pods of 4 GPUs fit on the H100 node
    assert choose_gpu_nodes(nodes, gpu_count=4, replicas=2).variant.name == "hopper"
    # a pod of 2 GPUs never lands on a one-GPU node
    assert choose_gpu_nodes([gpu_node("L4")], gpu_count=2, replicas=1) is None


def test_nodes_of_one_architecture_add_up():
    nodes = [node("l4-a", *GPUS["L4"]), node("l40s", *GPUS["L40S"]), gpu_node("T4")]
    choice = choose_gpu_nodes(nodes, gpu_count=1, replicas=2)
    assert choice.variant.name == "ada" and choice.capacity == 2


def test_preference_stable_then_newest_and_the_previous_choice_is_kept():
    nodes = [gpu_node(k) for k in ("T4", "A10", "A100", "L4", "H100", "B200")]
    # B200 (blackwell-100) is experimental in TEI: the newest stable architecture wins
    assert choose_gpu_nodes(nodes, gpu_count=1, replicas=1).variant.name == "hopper"
    # only experimental ones fit: still chosen
    assert choose_gpu_nodes([gpu_node("T4")], gpu_count=1, replicas=1).variant.name == "turing"
    previous = {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "6"}
    assert choose_gpu_nodes(nodes, gpu_count=1, replicas=1, previous=previous).variant.name == "ampere-86"


def test_unschedulable_untolerated_and_unselected_nodes_do_not_count():
    cordoned = gpu_node("H100", unschedulable=True)
    reserved = gpu_node("A100", taints=[GPU_TAINT, {"key": "team", "value": "ml", "effect": "NoSchedule"}])
    labelled = gpu_node("L4", labels={"pool": "blue"})
    nodes = [cordoned, reserved, labelled]
    assert choose_gpu_nodes(nodes, gpu_count=1, replicas=1).variant.name == "ada"
    tolerating = [{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert choose_gpu_nodes([cordoned, reserved], gpu_count=1, replicas=1) is None
    assert choose_gpu_nodes([cordoned, reserved], gpu_count=1, replicas=1,
                            tolerations=tolerating).variant.name == "ampere-80"
    assert choose_gpu_nodes(nodes, gpu_count=1, replicas=1, node_selector={"pool": "green"}) is None


def test_explicit_accelerator_pins_its_capability_and_checks_the_product():
    spec = parse_spec({"task": "embed", "model": "m", "accelerator": "ampere-86", "gpu": {"count": 2}})
    plan = build_plan(spec)
    assert plan.node_selector == {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "6"}
    assert plan.gpu_count == 2
    bad = parse_spec({"task": "embed", "model": "m", "accelerator": "hopper", "gpu": {"product": "NVIDIA-L4"}})
    with pytest.raises(PlanError, match="does not run the hopper image") as info:
        build_plan(bad)
    assert not info.value.retry


def test_auto_without_nodes_or_product_asks_for_nodes():
    with pytest.raises(PlanError) as info:
        build_plan(parse_spec({"task": "embed", "model": "m"}))
    assert info.value.reason == "NodesRequired"


# Engine and model compatibility ---------------------------------------------------------------

@pytest.mark.parametrize("task, model, engine, resolved", [
    ("embed", "BAAI/bge-small-en-v1.5", "auto", "tei"),
    ("embed", "Qwen/Qwen3-Embedding-0.6B", "auto", "tei"),
    ("rerank", "Qwen/Qwen3-Reranker-0.6B", "auto", "reranker"),
    ("rerank", "/data/models/qwen3-reranker-4b", "auto", "reranker"),
    ("rerank", "BAAI/bge-reranker-v2-m3", "auto", "tei"),
    ("rerank", "BAAI/bge-reranker-base", "tei", "tei"),
    ("rerank", "/data/my-finetune", "reranker", "reranker"),
    ("rerank", "BAAI/bge-reranker-v2-m3", "reranker", "reranker"),  # the service's cross-encoder path
    ("rerank", "cross-encoder/ms-marco-MiniLM-L-6-v2", "reranker", "reranker"),
])
def test_engine_resolution(task, model, engine, resolved):
    assert resolve_engine(task, model, engine) == resolved


@pytest.mark.parametrize("task, model, engine, advice", [
    ("rerank", "Qwen/Qwen3-Reranker-8B", "tei", "use engine reranker"),
    ("embed", "BAAI/bge-small-en-v1.5", "reranker", "use engine auto or tei"),
    ("embed", "Qwen/Qwen3-Reranker-0.6B", "auto", "use task rerank"),
])
def test_pairs_that_cannot_run_are_refused_with_advice(task, model, engine, advice):
    with pytest.raises(PlanError) as info:
        resolve_engine(task, model, engine)
    assert info.value.reason == "UnsupportedModelForEngine"
    assert advice in info.value.message and not info.value.retry


def test_engine_args_of_the_other_engine_are_refused():
    spec = parse_spec({"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B",
                       "engineArgs": {"pooling": "mean", "maxLength": 4096}, "accelerator": "cpu"})
    with pytest.raises(PlanError, match="pooling") as info:
        build_plan(spec)
    assert info.value.reason == "UnsupportedEngineArgs"
    spec = parse_spec({"task": "embed", "model": "m", "accelerator": "cpu", "engineArgs": {"maxDocuments": 5}})
    with pytest.raises(PlanError, match="maxDocuments"):
        build_plan(spec)
    spec = parse_spec({"task": "embed", "model": "m", "accelerator": "cpu", "engineArgs": {"dtype": "bfloat16"}})
    with pytest.raises(PlanError, match="float16 or float32"):
        build_plan(spec)


def test_reranker_batch_budget_below_its_minimum_is_refused():
    spec = parse_spec({"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu",
                       "engineArgs": {"maxBatchTokens": 128}})
    with pytest.raises(PlanError, match="at least 256"):
        build_plan(spec)


def test_revision_on_the_reranker_engine_is_refused_not_ignored():
    spec = parse_spec({"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu",
                       "revision": "main"})
    with pytest.raises(PlanError, match="revision") as info:
        build_plan(spec)
    assert info.value.reason == "UnsupportedEngineArgs"
