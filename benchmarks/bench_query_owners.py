"""What the query-counting wrapper costs per model call: giving each row of a call to its clean image.

Every attack evaluation runs on the model wrapped in ``attacks.accounting.QueryCounter``, which assigns each row
of every call to the nearest clean image of its batch; Square makes 5000 calls. This times that assignment as
the wrapper does it (float32 squared distances by |a|^2 - 2ab + |b|^2 with the clean images' |b|^2 kept,
``QueryCounter._owners``) against ``torch.cdist`` (what the wrapper used before, and what one would write),
side by side in one process, one CPU thread (median of 7 interleaved repeats), and checks that both give the
same owners.

Usage: ``.venv/bin/python benchmarks/bench_query_owners.py``. Not a test: nothing asserts on a time.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from robustbench_rpc.attacks.accounting import QueryCounter  # noqa: E402


def cdist_owners(clean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The assignment with torch.cdist in float32 (the wrapper's previous code)."""
    dist = torch.cdist(x.flatten(1).float(), clean.flatten(1).float())
    two = dist.topk(2, dim=1, largest=False)
    return torch.where(two.values[:, 0] < 0.99 * two.values[:, 1], two.indices[:, 0], -1)


def main() -> None:
    torch.set_num_threads(1)
    print(f"CPU {C.cpu_model()}, 1 thread, torch {torch.__version__}")
    print("| images | batch | ours ms/call | cdist ms/call | cdist / ours | same owners |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for size, batch in ((32, 16), (32, 128), (224, 16), (224, 64)):
        clean = torch.rand(batch, 3, size, size, generator=gen)
        x = (clean + (torch.rand(clean.shape, generator=gen) * 2 - 1) * 8 / 255).clamp(0, 1)
        counter = QueryCounter(torch.nn.Identity(), clean)
        calls = 200 if size == 32 else 20

        def many(fn):
            return lambda: [fn() for _ in range(calls)]
        times = C.time_interleaved({"ours": many(lambda: counter._owners(x)),
                                    "cdist": many(lambda: cdist_owners(clean, x))}, torch.device("cpu"), repeats=7)
        ours, ref = (statistics.median(times[k]) / calls for k in ("ours", "cdist"))
        same = torch.equal(counter._owners(x), cdist_owners(clean, x))
        print(f"| 3x{size}x{size} | {batch} | {1e3 * ours:.3f} | {1e3 * ref:.3f} | {ref / ours:.2f} | {same} |")


if __name__ == "__main__":
    main()
