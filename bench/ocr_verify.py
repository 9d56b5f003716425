"""OCR verification: latency on one core, detection quality, worker throughput on vs off.

    .venv/bin/python bench/ocr_verify.py [--sections latency quality throughput]
        [--banners 240] [--latency-images 20] [--clients 8] [--requests 48]

latency     OCR time per 1024x1024 and 1024x512 banner, the process pinned to one
            core (onnxruntime intra-op threads = 1, tesseract OMP_THREAD_LIMIT=1).
quality     >= 200 generated banners (DejaVu fonts, sizes, colours, backgrounds,
            blur, slight rotation), half drawn right and half with one word
            corrupted (swap / drop / substitute a letter, the substitute a
            look-alike half the time): share caught and share of right ones
            rejected, per engine and threshold, misses broken down by kind.
throughput  the real worker on a tiny model, N closed-loop clients, prompts with
            quoted text, verification on vs off.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_batching import free_port, post  # the existing worker bench's helpers

from modelfleet_common.textscore import score
from modelfleet_dev.textrender import corrupt, draw_text, random_style
from modelfleet_worker.ocr import ENGINES, OcrEngine, make_engine

_WORDS = (
    "SALE NOW OPEN GRAND OPENING SUMMER FRESH COFFEE BAKERY FREE DELIVERY TODAY ONLY "
    "NEW ARRIVALS BEST PRICE CLEARANCE WELCOME HOME PIZZA BURGER HAPPY BIRTHDAY LIMITED "
    "OFFER 50% OFF JOIN US MUSIC FESTIVAL WINTER 2025 BOOK FAIR CITY MARATHON HOTEL "
    "GARDEN MARKET LIVE JAZZ NIGHT SPECIAL DEALS"
)
WORDS = _WORDS.split()
LOOKALIKE = {("O", "0"), ("0", "O"), ("I", "1"), ("1", "I"), ("S", "5"), ("B", "8"), ("G", "6")}
SIZES = ((1024, 1024), (1024, 512))


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def engines(names: Sequence[str]) -> dict[str, OcrEngine]:
    out = {}
    for n in names:
        if n == "tesseract" and shutil.which("tesseract") is None:
            print("tesseract not installed: skipped (apt-get install tesseract-ocr)")
            continue
        out[n] = make_engine(n)
    return out


def banner(i: int, corrupted: bool) -> tuple[list[str], list[str], Any, str]:
    """(expected lines, drawn lines, image, corruption kind)."""
    rng = random.Random(i)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.choice((1, 1, 2, 2, 3)))
    ]
    drawn = corrupt(lines, rng) if corrupted else lines
    size = rng.choice(SIZES)
    img = draw_text(drawn, *size, random_style(rng, blur_max=2.0, rotation_max=4.0), rng)
    return lines, drawn, img, kind(lines, drawn)


def kind(lines: list[str], drawn: list[str]) -> str:
    a, b = " ".join(lines), " ".join(drawn)
    if a == b:
        return "none"
    if len(a) != len(b):
        return "drop"
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    if len(diff) == 2 and diff[0] == diff[1][::-1]:
        return "swap"
    return "look-alike" if (diff[0][0].upper(), diff[0][1].upper()) in LOOKALIKE else "substitute"


def latency(names: Sequence[str], n: int) -> None:
    core = sorted(os.sched_getaffinity(0))[-1]
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        found = engines(names)
        print(f"\n## OCR latency, one core (cpu {core}), {n} banners per size")
        # CPU time next to wall time: on a shared host the wall time measures the neighbours
        # too (the one core is theirs as well); the process's CPU time does not.
        print(
            f"{'engine':<12}{'size':<12}{'p50 ms':>10}{'p95 ms':>10}{'cpu p50':>10}{'cpu p95':>10}"
        )
        for name, e in found.items():
            for w, h in SIZES:
                times, cpu = [], []
                for i in range(n + 2):
                    rng = random.Random(1000 + i)
                    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))]
                    img = draw_text(lines, w, h, random_style(rng, 1.0, 2.0), rng)
                    t0, c0 = time.perf_counter(), time.process_time()
                    e.read(img)
                    if i >= 2:  # the first reads warm the engine
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                print(
                    f"{name:<12}{f'{w}x{h}':<12}{pct(times, 0.5) * 1e3:>10.0f}"
                    f"{pct(times, 0.95) * 1e3:>10.0f}{pct(cpu, 0.5) * 1e3:>10.0f}"
                    f"{pct(cpu, 0.95) * 1e3:>10.0f}"
                )
    finally:
        os.sched_setaffinity(0, allowed)


def quality(names: Sequence[str], n: int) -> None:
    found = engines(names)
    rows: dict[str, list[tuple[bool, float, str]]] = {k: [] for k in found}
    for i in range(n):
        lines, _, img, how = banner(i, corrupted=i % 2 == 1)
        for name, e in found.items():
            rows[name].append(
                (i % 2 == 1, score(lines, "\n".join(e.read(img)), 1.0).word_accuracy, how)
            )
    print(f"\n## Detection quality, {n} banners ({n // 2} right, {n - n // 2} corrupted)")
    print(f"{'engine':<12}{'threshold':>10}{'caught':>10}{'rejected right':>16}")
    for name, r in rows.items():
        bad = [x for x in r if x[0]]
        good = [x for x in r if not x[0]]
        for th in (1.0, 0.9, 0.8, 0.67):
            caught = sum(acc < th for _, acc, _ in bad) / len(bad)
            rejected = sum(acc < th for _, acc, _ in good) / len(good)
            print(f"{name:<12}{th:>10.2f}{caught:>10.1%}{rejected:>16.1%}")
        kinds: dict[str, list[bool]] = {}
        for _, acc, how in bad:
            kinds.setdefault(how, []).append(acc < 1.0)
        print(
            f"  {name} at 1.0, caught by kind: "
            + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(kinds.items()))
        )


def worker_run(
    cmd: list[str],
    body: dict[str, object],
    model: Path,
    verify: bool,
    clients: int,
    requests: int,
    workers: int,
) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_WORKER_")}
    env.update(
        MODELFLEET_WORKER_MODEL=str(model),
        MODELFLEET_WORKER_HOST="127.0.0.1",
        MODELFLEET_WORKER_PORT=str(port),
        MODELFLEET_WORKER_MAX_BATCH_SIZE="8",
        MODELFLEET_WORKER_MAX_QUEUE="256",
        MODELFLEET_WORKER_CPU_THREADS="1",
        MODELFLEET_WORKER_VERIFY=str(verify).lower(),
        MODELFLEET_WORKER_VERIFY_WORKERS=str(workers),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("worker did not become ready")
            time.sleep(0.1)
        url = base + "/v1/images/generations"
        for i in range(2):
            post(url, {**body, "seed": i})
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(lambda i: post(url, {**body, "seed": i}), range(requests)))
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(60)
    ocr = {
        k: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        for k in ("modelfleet_worker_ocr_seconds_sum", "modelfleet_worker_ocr_seconds_count")
        if line.startswith(k + " ")
    }
    count = ocr.get("modelfleet_worker_ocr_seconds_count", 0.0)
    return {
        "images_per_s": requests / wall,
        "p50_s": statistics.median(lat),
        "p95_s": pct(lat, 0.95),
        "ocr_ms": 1000 * ocr.get("modelfleet_worker_ocr_seconds_sum", 0.0) / count if count else 0,
    }


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    # On a shared machine the slowest runs measure the neighbours: keep the fastest.
    return max(runs, key=lambda r: r["images_per_s"])


def throughput(clients: int, requests: int, sample_size: int, workers: int, repeats: int) -> None:
    """Two cases: the tiny diffusion model (the issue's setting: its 64 px noise costs the
    OCR little), and the text-drawing backend at 1024x1024, where drawing is nearly free
    and every image has lettering to read: the pool's own capacity. Off and on runs
    alternate, `repeats` times each; the fastest of each is reported."""
    banner = 'a shop banner saying "SALE NOW"'
    cases: list[tuple[str, list[str], dict[str, object]]] = [
        (
            f"tiny model {2 * sample_size}px",
            ["modelfleet_worker.cli", "serve"],
            {"prompt": banner, "steps": 4},
        ),
        (
            "text backend 1024px",
            ["modelfleet_dev.textrender", "--default-size", "1024"],
            {"prompt": banner, "steps": 1},
        ),
    ]
    print(
        f"\n## Worker throughput, {clients} clients, {requests} requests, 1 torch thread, "
        f"{workers} OCR thread(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"fastest of {repeats} alternating runs"
    )
    print(
        f"{'case':<22}{'verify':<8}{'images/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'OCR ms/img':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [
                sys.executable, "-m", "modelfleet_worker.cli", "tiny-model", "--out", str(model),
                "--sample-size", str(sample_size),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for name, cmd, body in cases:
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(repeats):
                for verify in (False, True):
                    runs[verify].append(
                        worker_run(cmd, body, model, verify, clients, requests, workers)
                    )
            off, on = best(runs[False]), best(runs[True])
            for flag, r in (("off", off), ("on", on)):
                print(
                    f"{name:<22}{flag:<8}{r['images_per_s']:>10.2f}{r['p50_s'] * 1e3:>10.0f}"
                    f"{r['p95_s'] * 1e3:>10.0f}{r['ocr_ms']:>12.1f}"
                )
            print(
                f"{name}: with verification {on['images_per_s'] / off['images_per_s']:.1%} of off"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sections", nargs="+", default=["latency", "quality", "throughput"],
        choices=["latency", "quality", "throughput"],
    )  # fmt: skip
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--banners", type=int, default=240)
    ap.add_argument("--latency-images", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--sample-size", type=int, default=32, help="tiny model latent side")
    ap.add_argument("--verify-workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per case")
    args = ap.parse_args()
    if "latency" in args.sections:
        latency(args.engines, args.latency_images)
    if "quality" in args.sections:
        quality(args.engines, args.banners)
    if "throughput" in args.sections:
        throughput(args.clients, args.requests, args.sample_size, args.verify_workers, args.repeats)


if __name__ == "__main__":
    main()
