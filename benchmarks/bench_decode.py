"""(f) JPEG decode + resize + centre crop of an ImageNet-layout folder: ``ImageNetVal`` vs torchvision.

Ours: ``data.folders.ImageNetVal`` (PIL decode, shorter side to 256, centre crop 224, float [0, 1]). The
baseline is what a user would use instead: ``torchvision.datasets.ImageFolder`` with ``Resize(256)``,
``CenterCrop(224)``, ``ToTensor()``. Same files (``_common.jpeg_folder``), read in-process (0 workers)
in order; pixels compared. Also timed: PIL's JPEG draft mode (DCT-domain downscaling before the resize),
the usual "faster decoder", which is NOT pixel-identical; the table says by how much it differs, which
is why the loaders do not use it.

    python benchmarks/bench_decode.py --quick
"""
from __future__ import annotations

import torch

try:
    from . import _common as C
except ImportError:  # run as a script
    import _common as C


def main(argv=None) -> dict:
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    from robustbench_rpc.data.folders import EvalTransform, ImageNetVal, load_rgb

    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None)
    args = p.parse_args(argv)
    device, info = C.setup(args)
    args.repeats = args.repeats or 3
    n = args.n or (96 if args.quick else 384)
    root = C.jpeg_folder(n)
    wnids = sorted(d.name for d in root.iterdir() if d.is_dir())
    ours = ImageNetVal(str(root), classes=wnids, resize=256, crop=224, interpolation="bilinear")
    tv = torchvision.datasets.ImageFolder(str(root), T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]))
    tf = EvalTransform(256, 224, "bilinear")

    def draft(path):
        with Image.open(path) as im:
            im.draft("RGB", (256, 256))  # decode at 1/2, 1/4 ... scale when that still covers 256
            return tf(im.convert("RGB"))

    paths = [s[0] for s in ours.samples]
    assert [s[0] for s in tv.samples] == paths, "the two loaders list different files"
    same = all(torch.equal(ours[i][0], tv[i][0]) for i in range(n))
    diff_draft = max(float((draft(paths[i]) - ours[i][0]).abs().max()) for i in range(n))
    runs = {"ours ImageNetVal": lambda: [ours[i] for i in range(n)],
            "torchvision ImageFolder + Resize/CenterCrop/ToTensor": lambda: [tv[i] for i in range(n)],
            "PIL draft-mode decode (not pixel-identical)": lambda: [draft(pth) for pth in paths]}
    times = C.time_interleaved(runs, device, repeats=args.repeats, warmup=args.warmup)
    ips = {k: n / C.median(ts) for k, ts in times.items()}
    rows = [[k, n, f"{ips[k]:.1f}", C.spread(times[k])] for k in runs]
    keys = list(runs)
    summary = [C.summary_row("decode", "JPEG decode+crop images/s ours/torchvision ImageFolder",
                             f"{ips[keys[0]] / ips[keys[1]]:.2f}", ">= 1.0 (same pixels)",
                             f"{ips[keys[0]]:.0f} vs {ips[keys[1]]:.0f} img/s; pixel-identical: {same}"),
               C.summary_row("decode", "PIL draft-mode decode / ours (not used)",
                             f"{ips[keys[2]] / ips[keys[0]]:.2f}", "(info)",
                             f"max |pixel difference| {diff_draft:.3f} (of 1.0)" + (
                                 ": different pixels, so not used" if diff_draft > 0 else
                                 ": identical here because draft scaling only applies to images at least twice "
                                 "the 256 px target, which these (like ImageNet val's ~500x375) are not"))]
    details = C.md_table(["pipeline", "images", "images/s", "pass ms median (min-max)"], rows)
    print(details)
    C.finish(args, "decode", info, summary, details, {"images_per_s": ips, "pixel_identical": same,
                                                      "draft_max_abs_diff": diff_draft})
    return {"summary": summary, "details": details}


if __name__ == "__main__":
    main()
