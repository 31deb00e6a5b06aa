"""Shared helpers of the benchmarks: machine description, timing (warm-up + median of repeats, CUDA
synchronized), peak tensor memory (CUDA allocator stats, or the CPU allocator's allocation events
recorded by ``torch.profiler``), the small trained model, and result files.

Not a test helper: nothing here asserts on a time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- machine ------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, Any]) -> str:
    dev = info["device"] + (f" ({info['gpu']}, CUDA {info['cuda']})" if "gpu" in info else "")
    return (f"CPU: {info['cpu']} | cores: {info['cores']} | torch {info['torch']} "
            f"({info['torch_threads']} threads) | python {info['python']} | device: {dev} | "
            f"1-min load average at start: {info['load_avg_1min']}")


# -- arguments ----------------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda if available)")
    p.add_argument("--quick", action="store_true", help="small CPU-friendly sizes (used by run_all.py)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs before timing")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's default, one per core)")
    return p


def setup(args) -> tuple[torch.device, dict[str, Any]]:
    """Resolve the device, apply --threads, print and return the machine description."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print(machine_line(info), flush=True)
    return device, info


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return dev


# -- timing -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``fn()`` for ``repeats`` runs after ``warmup`` untimed runs (CUDA synced)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> str:
    """'median (min-max)' in ms, for the detail tables."""
    return f"{median(xs) * 1e3:.1f} ({min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f})"


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 3,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Time several candidates round-robin (A B C A B C ...), so that a slow phase of a shared machine
    hits all of them alike. Returns the per-candidate list of seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[key].append(time.perf_counter() - t0)
    return out


# -- memory -------------------------------------------------------------------------------------------
CPU_MEMORY_METHOD = ("torch.profiler(profile_memory=True): every allocation/free event of the c10 CPU "
                     "allocator in the region, peak of their running sum (tensor memory only; excludes "
                     "oneDNN/MKL private scratch and the Python heap)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated() minus the allocated bytes before the region"


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated *by* ``fn()`` above what was live before it (run once)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events: list[tuple[int, int]] = []
    try:  # exact: the allocator's own allocation records (alloc_size < 0 is a free)
        from torch._C._profiler import _EventType

        def walk(nodes):
            for e in nodes:
                if e.typed[0] == _EventType.Allocation and str(e.typed[1].device).startswith("cpu"):
                    events.append((e.start_time_ns, int(e.typed[1].alloc_size)))
                walk(e.children)

        walk(prof.profiler.kineto_results.experimental_event_tree())
    except Exception:  # fallback (coarser: frees inside an op are netted against that op's allocations)
        events = [(int(e.time_range.start * 1000), int(e.self_cpu_memory_usage)) for e in prof.events()
                  if e.self_cpu_memory_usage]
    events.sort(key=lambda t: t[0])
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return peak


def mib(n: float) -> float:
    return n / 2**20


# -- model --------------------------------------------------------------------------------------------
def checkpoint_for(name: str) -> Path | None:
    path = ROOT / "robustbench_rpc" / "checkpoints" / f"{name}.safetensors"
    return path if path.is_file() else None


def micro_model(name: str, device: torch.device, train_epochs: int = 6, seed: int = 0):
    """The packaged checkpoint of ``name`` if present; else the model trained on digits32-train for
    ``train_epochs`` epochs (seeded; cached in the temp folder, keyed by name, seed, epochs and torch
    version; 0: random weights). Returns ``(model, provenance string)``."""
    from robustbench_rpc.models import load_model

    ckpt = checkpoint_for(name)
    if ckpt is not None:
        return load_model(name, checkpoint=ckpt).to(device).eval(), f"packaged checkpoint {ckpt.name}"
    torch.manual_seed(seed)
    model = load_model(name)
    if train_epochs <= 0:
        return model.to(device).eval(), "random weights (no checkpoint packaged)"
    cache = Path(tempfile.gettempdir()) / (
        f"robustbench_rpc_bench_{name}_s{seed}_{train_epochs}ep_torch{torch.__version__}.pt")
    what = f"trained {train_epochs} epochs on digits32-train here (no checkpoint packaged)"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu"))
        return model.to(device).eval(), what + ", cached"
    _quick_train(model, train_epochs, seed)
    try:
        torch.save(model.state_dict(), cache)
    except OSError:
        pass
    return model.to(device).eval(), what


def _quick_train(model: torch.nn.Module, epochs: int, seed: int) -> None:
    import math

    import torch.nn.functional as F
    from robustbench_rpc.data import digits32

    ds = digits32("train")
    x, y = ds.images, ds.labels
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    total = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def jpeg_folder(n: int, classes: int = 4, seed: int = 0) -> Path:
    """An ImageNet-layout folder (``<wnid>/<file>.JPEG``) of ``n`` real photographs: random 300-420 px crops
    of scikit-learn's two bundled photos saved as quality-90 JPEGs (cached in the temp folder)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = Path(tempfile.gettempdir()) / f"robustbench_rpc_bench_jpeg_{n}_{classes}_{seed}"
    if (root / ".complete").is_file():
        return root
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = int(rng.integers(300, 421)), int(rng.integers(300, 421))
        r, c = int(rng.integers(0, p.shape[0] - h + 1)), int(rng.integers(0, p.shape[1] - w + 1))
        d = root / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p[r:r + h, c:c + w]).save(d / f"img_{i:06d}.JPEG", quality=90)
    (root / ".complete").write_text("ok")
    return root


def digits_batch(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of digits32 (repeated if n exceeds the 540 test images)."""
    from robustbench_rpc.data import digits32

    ds = digits32("test")
    reps = -(-n // len(ds))
    x = ds.images.repeat(reps, 1, 1, 1)[:n]
    y = ds.labels.repeat(reps)[:n]
    return x.to(device), y.to(device)


# -- output -------------------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_row(bench: str, metric: str, value: str, goal: str = "", note: str = "") -> dict[str, str]:
    return {"bench": bench, "metric": metric, "value": value, "goal": goal, "note": note}


def finish(args, bench: str, info: dict[str, Any], summary: list[dict[str, str]], details: str,
           extra: dict[str, Any] | None = None) -> None:
    """Print the summary and write the JSON file run_all.py reads."""
    print()
    print(md_table(["metric", "value", "goal", "note"],
                   [[r["metric"], r["value"], r["goal"], r["note"]] for r in summary]))
    if args.json:
        Path(args.json).write_text(json.dumps({"bench": bench, "machine": info, "summary": summary,
                                               "details": details, **(extra or {})}, indent=1))
