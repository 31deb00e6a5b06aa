"""FMN and DDN against foolbox 3.3.4 on the shipped micro models: per-sample minimal norms and medians.

Usage: ``.venv/bin/python benchmarks/bench_min_norm_foolbox.py [N_IMAGES] [STEPS]`` (default 64 100). The reference
is foolbox with its two FMN projection bugs corrected (tests/test_min_norm_foolbox.py says which); "foolbox'"
is the same reference on the images plus uniform noise of 1e-7, to show how far the reference moves by itself.
Prints one line per model x attack: medians, the largest per-sample relative difference to the reference, and
the share of samples within 1 % / 10 % of it, for ours and for foolbox'.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_min_norm_foolbox import REFERENCE, fb, images, micro, minimal_norms  # noqa: E402

from robustbench_rpc.attacks import get_attack  # noqa: E402


def main(n: int = 64, steps: int = 100) -> None:
    torch.set_num_threads(1)
    x, y = images(n)
    noisy = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 2e-7).clamp(0, 1)
    print(f"{n} digits32 test images, {steps} steps; median minimal norm of the broken samples")
    for name in ("symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32"):
        model = micro(name)
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        for attack, norm in (("fmn", "L0"), ("fmn", "L1"), ("fmn", "L2"), ("fmn", "Linf"), ("ddn", "L2")):
            ref_cls = fb.attacks.DDNAttack if attack == "ddn" else REFERENCE[norm]
            params = {"norm": norm} if attack == "fmn" else {}
            ours = minimal_norms(model, x, get_attack(attack, steps=steps, **params)(model, x, y), y, norm)
            ref = minimal_norms(model, x, ref_cls(steps=steps).run(fmodel, x, fb.criteria.Misclassification(y)),
                                y, norm)
            ref2 = minimal_norms(model, noisy, ref_cls(steps=steps).run(fmodel, noisy,
                                                                         fb.criteria.Misclassification(y)), y, norm)
            ok = torch.isfinite(ref) & (ref > 0) & torch.isfinite(ours) & torch.isfinite(ref2)
            rel, rel2 = (ours[ok] / ref[ok] - 1).abs(), (ref2[ok] / ref[ok] - 1).abs()
            print(f"{name:28s} {attack}-{norm:4s} ours {float(ours[ok].median()):.4f}  foolbox "
                  f"{float(ref[ok].median()):.4f}  foolbox' {float(ref2[ok].median()):.4f}  | max rel diff: ours "
                  f"{float(rel.max()):.2g} foolbox' {float(rel2.max()):.2g}  within 1%: ours "
                  f"{float((rel <= .01).float().mean()):.0%} foolbox' {float((rel2 <= .01).float().mean()):.0%}  "
                  f"within 10%: ours {float((rel <= .1).float().mean()):.0%} foolbox' "
                  f"{float((rel2 <= .1).float().mean()):.0%}  (n={int(ok.sum())}, unbroken ours "
                  f"{int(torch.isinf(ours).sum())} foolbox {int(torch.isinf(ref).sum())})", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
