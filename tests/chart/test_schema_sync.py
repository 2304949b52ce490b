"""The chart accepts exactly the engine arguments the ModelService CRD accepts, and refuses the
ones the resolved engine would not understand with the same rule as the operator."""
from __future__ import annotations

import json

import pytest

from modelservice.api import values_schema
from modelservice.api.models import RERANKER_ONLY_ARGS, TEI_ONLY_ARGS

from .conftest import ROOT

pytestmark = pytest.mark.helm

PLAIN = ["operator.enabled=false", "crds.enabled=false"]


@pytest.mark.parametrize("component", values_schema.COMPONENTS)
def test_values_schema_engine_args_are_the_crds(component):
    schema = json.loads((ROOT / values_schema.VALUES_SCHEMA_PATH).read_text())
    got = schema["properties"][component]["properties"]["engineArgs"]
    assert got == values_schema.expected_engine_args(), (
        f"{component}.engineArgs in values.schema.json differs from the CRD's engineArgs: "
        f"run `{values_schema.COMMAND}`")


def test_values_schema_generator_rewrites_a_stale_file_and_checks_it(tmp_path):
    committed = (ROOT / values_schema.VALUES_SCHEMA_PATH).read_text()
    stale = json.loads(committed)
    stale["properties"]["reranker"]["properties"]["engineArgs"]["properties"].pop("maxLength")
    path = tmp_path / values_schema.VALUES_SCHEMA_PATH
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stale, indent=2) + "\n")
    assert values_schema.main(["--root", str(tmp_path), "--check"]) == 1
    assert values_schema.main(["--root", str(tmp_path)]) == 0
    assert path.read_text() == committed
    assert values_schema.main(["--root", str(tmp_path), "--check"]) == 0


# One value per engine-only argument, valid for the schema, so the template's rule is what refuses it.
SAMPLE = {"maxBatchRequests": 4, "maxClientBatchSize": 8, "maxConcurrentRequests": 8, "pooling": "cls",
          "autoTruncate": True, "payloadLimit": 1000, "defaultPrompt": "q: ", "defaultPromptName": "query",
          "maxLength": 512, "maxDocuments": 10, "instruction": "Find the answer",
          "promptCacheTokens": 256}


@pytest.mark.parametrize("operator", [True, False], ids=["operator", "plain"])
@pytest.mark.parametrize("arg", TEI_ONLY_ARGS)
def test_tei_only_argument_on_the_reranker_is_refused_naming_it(render_error, arg, operator):
    values = {"operator": {"enabled": operator}, "crds": {"enabled": False},
              "reranker": {"accelerator": "cpu", "engineArgs": {arg: SAMPLE[arg]}}}
    err = render_error(values=values)
    assert f"reranker.engineArgs.{arg}: not an argument of engine reranker" in err


@pytest.mark.parametrize("arg", RERANKER_ONLY_ARGS)
def test_reranker_only_argument_on_tei_is_refused_naming_it(render_error, arg):
    values = {"operator": {"enabled": False}, "crds": {"enabled": False},
              "embedding": {"accelerator": "cpu", "engineArgs": {arg: SAMPLE[arg]}}}
    assert f"embedding.engineArgs.{arg}: not an argument of engine tei" in render_error(values=values)


def test_revision_on_the_reranker_engine_is_refused(render_error):
    err = render_error(sets=PLAIN + ["reranker.accelerator=cpu", "reranker.revision=main"])
    assert "reranker.revision is not a setting of the reranker engine" in err


def test_reranker_token_budget_below_the_engines_minimum_is_refused(render_error):
    err = render_error(sets=PLAIN + ["reranker.accelerator=cpu", "reranker.engineArgs.maxBatchTokens=128"])
    assert "reranker.engineArgs.maxBatchTokens=128" in err and "at least 256" in err


def test_bfloat16_on_tei_is_refused(render_error):
    err = render_error(sets=PLAIN + ["embedding.accelerator=cpu", "embedding.engineArgs.dtype=bfloat16"])
    assert "embedding.engineArgs.dtype=bfloat16 is not a TEI --dtype" in err


def test_exclusive_default_prompts_are_refused_by_the_schema(render_error):
    err = render_error(values={"embedding": {"engineArgs": {"defaultPrompt": "q: ", "defaultPromptName": "query"}}},
                       sets=["crds.enabled=false"])
    assert "engineArgs" in err


def test_large_numbers_from_a_values_file_stay_integers(render):
    """Values files give Helm floats; 4000000 must not reach the ModelService or TEI as 4e+06."""
    engine_args = {"payloadLimit": 4000000, "maxBatchTokens": 1048576}
    with_operator = render(values={"crds": {"enabled": False}, "embedding": {"engineArgs": engine_args}})
    (ms,) = [m for m in with_operator.kinds("ModelService") if m["spec"]["task"] == "embed"]
    assert ms["spec"]["engineArgs"] == engine_args
    plain = render(values={"operator": {"enabled": False}, "crds": {"enabled": False},
                           "embedding": {"accelerator": "cpu", "engineArgs": engine_args}})
    (deploy,) = [d for d in plain.kinds("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["name"] == "tei"]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--payload-limit") + 1] == "4000000"
    assert args[args.index("--max-batch-tokens") + 1] == "1048576"
