"""README.md and docs/modelservice-reference.md say what the code does: the ModelService reference
and the GPU variant table are the generator's output for the current schema and variants.yaml,
they cover every field and every variant, and the generator's --check catches drift."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from modelservice.api import reference

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC = ROOT / "docs" / "modelservice-reference.md"
CRD_FILE = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"
CACHE_CRD_FILE = ROOT / "charts" / "embedding-images" / "crds" / "modelcaches.yaml"
VARIANTS = yaml.safe_load((ROOT / "charts" / "embedding-images" / "files" / "variants.yaml").read_text())
REGENERATE = "run `python -m modelservice.api.reference` from the repository root and commit the result"


def section(text: str, title: str) -> str:
    assert f"\n## {title}\n" in text, f"README.md has no '## {title}' section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in text (header and separator rows included)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.strip().startswith("|")]


def crd_field_paths() -> list[str]:
    """Every field of the committed CRD's spec and status, walked here independently of the
    generator: `spec.gpu.count`, `spec.tolerations[].key`, ..."""
    (version,) = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    paths: list[str] = []

    def walk(node: dict, path: str) -> None:
        for name, child in node.get("properties", {}).items():
            paths.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
            walk(child.get("items", {}), f"{path}.{name}[]")

    walk(root["spec"], "spec")
    walk(root["status"], "status")
    return paths


def test_committed_reference_is_the_generated_one():
    assert DOC.is_file(), f"{DOC.relative_to(ROOT)} is missing: {REGENERATE}"
    assert DOC.read_text() == reference.render_reference(), (
        f"{DOC.relative_to(ROOT)} differs from the schema: {REGENERATE}")


def test_readme_generated_blocks_are_up_to_date():
    expected = reference.build_outputs(ROOT)[ROOT / "README.md"]
    assert README.read_text() == expected, f"README.md's generated blocks are stale: {REGENERATE}"


def test_reference_documents_every_field_of_the_crd():
    documented = {row[0].strip("`") for row in table_rows(DOC.read_text()) if row and row[0].startswith("`")}
    missing = [p for p in crd_field_paths() if p not in documented]
    assert not missing, f"fields of the CRD missing from the reference: {missing}"


def test_reference_states_defaults_limits_and_rules_as_the_crd_does():
    doc, cache_doc = DOC.read_text().split("\n# ModelCache reference", 1)
    rows = {row[0].strip("`"): row for row in table_rows(doc) if row and row[0].startswith("`")}
    # field | type | default | values | description
    assert rows["spec.task"][2] == "required" and rows["spec.model"][2] == "required"
    assert rows["spec.port"][2] == "`8080`" and rows["spec.port"][3] == "1 to 65535"
    assert rows["spec.replicas"][2] == "`1`"
    accelerators = re.findall(r"`([^`]+)`", rows["spec.accelerator"][3])
    assert accelerators == ["auto"] + [v["name"] for v in VARIANTS["variants"]]
    assert rows["spec.cache.sizeLimit"][1] == "quantity"
    (version,) = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    validation = doc.split("## Validation", 1)[1].split("\n## ", 1)[0]
    for rule in spec["x-kubernetes-validations"]:
        assert rule["message"] in validation, f"CEL rule not documented: {rule['message']}"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    shown = [row[0] for row in table_rows(doc.split("## kubectl get columns", 1)[1])[2:]]
    assert shown == columns
    # The ModelCache part, from its own CRD: the immutable fields and its columns.
    (version,) = yaml.safe_load(CACHE_CRD_FILE.read_text())["spec"]["versions"]
    cache_rows = {row[0].strip("`"): row for row in table_rows(cache_doc) if row and row[0].startswith("`")}
    assert cache_rows["spec.size"][2] == "required" and cache_rows["spec.retention"][2] == "`Keep`"
    cache_validation = cache_doc.split("## Validation", 1)[1].split("\n## ", 1)[0]
    for field in ("model", "storageClassName", "accessMode"):
        assert f"{field} is immutable" in cache_validation
    shown = [row[0] for row in table_rows(cache_doc.split("## kubectl get columns", 1)[1])[2:]]
    assert shown == [c["name"] for c in version["additionalPrinterColumns"]]


def test_readme_spec_block_lists_each_top_level_field_and_links_the_reference():
    text = section(README.read_text(), "ModelService reference")
    listed = [row[0].strip("`") for row in table_rows(text)[2:]]
    top = [p for p in crd_field_paths() if p.startswith("spec.") and p.count(".") == 1 and "[]" not in p]
    assert listed == top
    assert "(docs/modelservice-reference.md)" in text


def test_readme_variant_table_has_every_variant_with_its_images_and_products():
    text = section(README.read_text(), "GPU variants")
    variants_table, products_table = text.split("`gpu.product` values", 1)
    rows = {row[0].strip("`"): row for row in table_rows(variants_table) if row and row[0].startswith("`")}
    for variant in VARIANTS["variants"]:
        row = rows.get(variant["name"])
        assert row, f"variant {variant['name']} missing from README's GPU variants table"
        assert f"`{variant['teiTag']}`" in row and f"`{variant['rerankerTag']}`" in row, row
        for capability in variant.get("computeCapabilities") or ():
            assert capability in row[1], (variant["name"], row)
    for product, capability in VARIANTS["products"].items():
        (variant,) = [v for v in VARIANTS["variants"] if capability in (v.get("computeCapabilities") or ())]
        assert re.search(rf"\| `{re.escape(variant['name'])}` \|[^\n]*`{re.escape(product)}`", products_table), \
            f"{product} not listed under {variant['name']}"
    assert VARIANTS["tei"]["repository"] in text and VARIANTS["reranker"]["repository"] in text


def run_generator(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelservice.api.reference", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def test_check_names_the_stale_file_and_a_rerun_fixes_it(tmp_path):
    shutil.copy(README, tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "modelservice-reference.md").write_text(
        DOC.read_text().replace("| `spec.port` |", "| `spec.portNumber` |"))
    stale = run_generator("--check", root=tmp_path)
    assert stale.returncode == 1
    assert "modelservice-reference.md is out of date" in stale.stderr and "README.md" not in stale.stderr
    assert run_generator(root=tmp_path).returncode == 0
    assert (tmp_path / "docs" / "modelservice-reference.md").read_text() == DOC.read_text()
    assert run_generator("--check", root=tmp_path).returncode == 0


def test_generator_refuses_a_readme_without_the_markers(tmp_path):
    (tmp_path / "README.md").write_text("# a README without generated blocks\n")
    proc = run_generator(root=tmp_path)
    assert proc.returncode == 2
    assert "no generated block 'modelservice-spec'" in proc.stderr
    assert (tmp_path / "README.md").read_text() == "# a README without generated blocks\n"


def test_readme_keeps_the_setup_and_test_commands_and_says_which_targets_need_docker():
    text = README.read_text()
    setup = section(text, "Set-up and tests")
    assert "make setup" in setup and "make test" in setup
    docker = next(s for s in re.split(r"\n## ", text) if s.startswith("Container images"))
    assert "make images" in docker and "make kind-up" in docker and "Docker" in docker
    assert "make demo" in section(text, "The demo: `make demo`")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(PY\) demo/demo.py", makefile, re.M), "Makefile has no demo target"
