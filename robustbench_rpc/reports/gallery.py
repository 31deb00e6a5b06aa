"""The report's gallery: what an attack or a corruption did to a few fixed images, per model.

For the first ``SAMPLES`` images of the run (dataset order, unit 0): the clean image with its label and the
model's prediction; for each attack at the headline budget (the budget most attack evaluations share, the
larger on a tie; pixel threat model) the adversarial image with its prediction and its perturbation,
amplified so that +-eps spans black to white (the factor is written); for corruptions, the first image at
each severity of up to ``CORRUPTIONS`` corruptions with the prediction.

Adversarial images come from the run's saved sets (``store/adversarial.py``) where they exist; otherwise
unit 0 of the evaluation is attacked again with its stored seed (``evalspec.unit_seed``: the same images as
in the run, whatever else ran) and its rows compared with the stored ones: a gallery built that way says
whether it reproduced the stored outcome. Recomputing needs the run's data and models (the plan is rebuilt
from the stored suite and settings); without them the gallery shows what the saved sets hold, or nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..evalspec import THREAT_DEFAULTS, EvalSpec, eps_label
from .data import RunData, slug
from .plots import Plot
from ..data.resolve import ROOT_OF
from ..evaluation.plan import Plan, RunConfig
from ..evaluation.suite import suite_from_dict
from ..evaluation.compute_unit import unit_rows
from ..store.adversarial import IMAGES_KEY, gallery_images, read_gallery, read_set, unit_file
from ..atomic import replacing
from ..evaluation.harness import build_model
from ..attacks import EOTModel

SAMPLES = 3        # fixed images per model
CORRUPTIONS = 5    # corruptions shown (each at every stored severity)
MAX_MODELS = 8     # a grid of dozens of models: the first ones
GALLERY_DPI = 100  # the page embeds every figure: small images of small images


@dataclass
class AttackPanel:
    label: str
    adversarial: torch.Tensor     # (SAMPLES, C, H, W) display images in [0, 1]
    perturbation: torch.Tensor    # amplified: 0.5 + delta * scale
    scale: list[float]
    preds: list[int]
    source: str                   # "saved" (the run's files) | "recomputed"
    identical: bool | None = None  # recomputed: the same rows as stored for unit 0


@dataclass
class ModelGallery:
    model: str
    ids: list[int]
    labels: list[int]
    clean: torch.Tensor
    clean_preds: list[int | None]
    eps: float | None = None
    attacks: list[AttackPanel] = field(default_factory=list)
    corruptions: list[tuple[str, int, torch.Tensor, int | None]] = field(default_factory=list)  # name, s, image, pred


def headline_budget(data: RunData) -> tuple[str, float, list[str]] | None:
    """(norm, eps, attack eval keys) of the budget most pixel-space attack evaluations share (larger eps on a tie)."""
    groups: dict[tuple[str, float], list[str]] = {}
    for ek in data.evals_of("attack")["eval_key"]:
        p = data.info(ek)["params"]
        if p.get("eps") is None or any(p.get(k, v) != v for k, v in THREAT_DEFAULTS.items()):
            continue
        groups.setdefault((str(p.get("norm", "Linf")), float(p["eps"])), []).append(ek)
    if not groups:
        return None
    (norm, eps), keys = max(groups.items(), key=lambda kv: (len(kv[1]), kv[0][1]))
    return norm, eps, keys


def _plan(data: RunData):
    """The run's plan rebuilt from its stored suite and settings (data and models as the run read them)."""
    raw = dict(data.meta.get("suite") or {})
    settings = data.meta.get("settings") or {}
    suite = suite_from_dict({"name": raw.get("name", "run"), "version": raw.get("version", 1),
                             "description": raw.get("description", ""), "defaults": raw.get("defaults", {}),
                             "evaluation": raw.get("evaluations", []), **({"sweep": raw["sweep"]} if raw.get("sweep")
                                                                            else {})}, raw.get("path", "suite"))
    roots = {ROOT_OF.get(name, name): d["root"] for name, d in (settings.get("data") or {}).items()
             if isinstance(d, dict) and d.get("root")}
    subset = settings.get("subset") or {}
    specs = [s for s in data.models.get("spec", []) if isinstance(s, str)]
    return Plan(RunConfig(suite=suite, models=list(dict.fromkeys(specs)), out=data.run_dir,
                          batch_size=settings.get("batch_size"), limit=settings.get("limit"), seed=settings.get("seed"),
                          amp=settings.get("amp"), dataset=settings.get("dataset"), data_roots=roots,
                          subset=subset.get("file") if subset.get("method") == "file" else None,
                          eot_samples=settings.get("eot_samples", 8), progress=False), log=lambda *_: None)


def _unit0(ds, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(min(batch_size, len(ds)))]
    x = torch.stack([torch.as_tensor(it[0]) for it in items])
    return x, torch.tensor([int(it[1]) for it in items]), torch.tensor([int(it[2]) for it in items])


def recompute_unit0(plan, model: torch.nn.Module, spec: EvalSpec) -> tuple[dict[str, Any], list[int]]:
    """Unit 0 of an attack evaluation attacked again with its stored seed: (rows with the images, ids)."""
    x, y, ids = _unit0(plan.dataset_for(spec), plan.batch_size)
    rows = unit_rows(model, replace(spec, save_adversarial=True), 0, x, y, ids, run_seed=plan.seed,
                     device=plan.device, amp=plan.amp)
    return rows, ids.tolist()


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def _pred(rows, sid: int) -> int | None:
    return int(rows.loc[sid, "pred"]) if rows is not None and sid in rows.index else None


class _Recompute:
    """The run's plan and models, rebuilt only when an image the run did not keep is needed."""

    def __init__(self, data: RunData):
        self.data, self._plan, self._models, self.failed = data, None, {}, False

    @property
    def plan(self):
        if self._plan is None and not self.failed:
            try:
                self._plan = _plan(self.data)
            except Exception:  # noqa: BLE001 - the run's data or models are not here: show what was kept
                self.failed = True
        return self._plan

    def model(self, model_key: str):
        if model_key not in self._models and self.plan is not None:
            m = {x.display: x for x in self.plan.models}.get(self.data.name(model_key))
            try:
                model = build_model(self.plan, m) if m is not None else None
            except Exception:  # noqa: BLE001 - saved images are still shown
                model = None
            if model is not None and _stochastic(self.data, model_key):  # as the harness evaluates it

                model = EOTModel(model, samples=self.plan.cfg.eot_samples)
            self._models[model_key] = model
        return self._models.get(model_key)


def model_gallery(data: RunData, model_key: str, again: _Recompute | None = None) -> ModelGallery | None:
    """The gallery of one model: the run's gallery files, else its saved sets, else unit 0 recomputed."""
    again = again or _Recompute(data)
    budget = headline_budget(data)
    clean_keys = list(data.evals_of("clean")["eval_key"])
    clean_rows = data.store.samples(model_key, clean_keys[0]).set_index("sample_id") if clean_keys else None
    kept = {ek: read_gallery(data.run_dir, model_key, ek) for ek in clean_keys + (budget[2] if budget else [])}
    first = next((g for g in kept.values() if g is not None), None)
    if first is not None:
        ids, clean = first["sample_ids"].tolist(), _float(first["clean"])
    elif again.plan is not None:
        x, _, sids = _unit0(again.plan.base_dataset(again.plan.dataset), again.plan.batch_size)
        ids, clean = sids[:SAMPLES].tolist(), x[:SAMPLES].float()
    else:
        return None
    labels = []
    for ek in clean_keys + (budget[2] if budget else []):
        rows = data.store.samples(model_key, ek).set_index("sample_id")
        if all(i in rows.index for i in ids):
            labels = [int(rows.loc[i, "label"]) for i in ids]
            break
    if not labels:
        return None
    g = ModelGallery(data.name(model_key), ids, labels, clean, [_pred(clean_rows, i) for i in ids],
                     budget[1] if budget else None)
    for ek in (budget[2] if budget else []):
        info = data.info(ek)
        stored = data.store.samples(model_key, ek).set_index("sample_id")
        if not all(i in stored.index for i in ids):
            continue
        preds = [int(stored.loc[i, "pred"]) for i in ids]
        shown = kept.get(ek)
        if shown is not None and "adversarial" in shown and shown["sample_ids"].tolist() == ids:
            g.attacks.append(AttackPanel(info["name"], _float(shown["adversarial"]), _float(shown["perturbation"]),
                                         shown["scale"].tolist(), preds, "saved"))
            continue
        path = unit_file(data.run_dir, model_key, ek, 0)
        if path.is_file() and again.plan is not None:  # a saved set of a run without gallery files
            sids, images, _ = read_set(path)
            pos = {s: k for k, s in enumerate(sids)}
            if all(i in pos for i in ids):
                x, _, _ = _unit0(again.plan.base_dataset(again.plan.dataset), again.plan.batch_size)
                d = gallery_images(x[:len(ids)], images[[pos[i] for i in ids]], eps=budget[1])
                g.attacks.append(AttackPanel(info["name"], _float(d["adversarial"]), _float(d["perturbation"]),
                                             d["scale"].tolist(), preds, "saved"))
                continue
        declared = dict((data.store.evaluation_info(ek) or {}).get("params") or {})  # as keyed, no defaults added
        spec = EvalSpec("attack", info["name"], info["dataset"], declared)
        model = again.model(model_key) if spec.key == ek else None
        if model is None:
            continue
        rows, uids = recompute_unit0(again.plan, model, spec)
        pos = {s: k for k, s in enumerate(uids)}
        unit0 = stored[stored["unit"] == 0].sort_index()
        mine = sorted((int(s), int(p), int(c)) for s, p, c in zip(uids, rows["pred"], rows["correct1"]))
        identical = mine == [(int(s), int(r.pred), int(r.correct1)) for s, r in unit0.iterrows()]
        x, _, _ = _unit0(again.plan.dataset_for(spec), again.plan.batch_size)
        d = gallery_images(x[[pos[i] for i in ids]], rows[IMAGES_KEY][[pos[i] for i in ids]], eps=budget[1])
        g.attacks.append(AttackPanel(info["name"], _float(d["adversarial"]), _float(d["perturbation"]),
                                     d["scale"].tolist(), [int(rows["pred"][pos[i]]) for i in ids], "recomputed",
                                     identical))
    _corruptions(data, model_key, g, again)
    return g


def _corruptions(data: RunData, model_key: str, g: ModelGallery, again: _Recompute) -> None:
    """The first image at each severity of the first CORRUPTIONS corruptions, with the model's predictions."""
    corr = data.evals_of("corruption")
    names = list(dict.fromkeys(data.info(ek)["params"].get("corruption") for ek in corr["eval_key"]))[:CORRUPTIONS]
    for ek in corr["eval_key"]:
        info = data.info(ek)
        p = info["params"]
        if p.get("corruption") not in names:
            continue
        rows = data.store.samples(model_key, ek).set_index("sample_id")
        kept = read_gallery(data.run_dir, model_key, ek)
        if kept is not None:
            sid, image = int(kept["sample_ids"][0]), _float(kept["clean"][0])
        elif again.plan is not None:
            declared = dict((data.store.evaluation_info(ek) or {}).get("params") or {})
            spec = EvalSpec("corruption", info["name"], info["dataset"],
                            {k: declared[k] for k in ("corruption", "severity", "source", "severity_table")
                             if k in declared})
            if spec.key != ek:
                spec = replace(spec, params={**spec.params, "severity_table": "auto"})
            try:
                item = again.plan.dataset_for(spec)[0]
            except Exception:  # noqa: BLE001 - released files absent here: this corruption is left out
                continue
            sid, image = int(item[2]), _float(torch.as_tensor(item[0]))
        else:
            continue
        g.corruptions.append((str(p.get("corruption")), int(p.get("severity", 0)), image, _pred(rows, sid)))


def _stochastic(data: RunData, model_key: str) -> bool:
    c = data.checks
    if c.empty:
        return False
    hit = c[(c["model_key"] == model_key) & (c["check"] == "stochastic_model")]
    return bool(len(hit)) and hit.iloc[0]["status"] == "warn"


def _save_small(fig, folder: Path, name: str, title: str, caption: str) -> Plot:
    """As the report's other figures (PNG + SVG, each atomic), at 100 dpi: images of images, kept light."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    with replacing(png, durable=False) as tmp:
        fig.savefig(tmp, format="png", dpi=GALLERY_DPI, bbox_inches="tight")
    with replacing(svg, durable=False) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return Plot(name, title, caption, png, svg)


def _show(ax, image: torch.Tensor, title: str, color: str = "black") -> None:
    img = image.detach().float().clamp(0, 1).permute(1, 2, 0).numpy()
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.set_title(title, fontsize=6, color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def gallery_figure(g: ModelGallery, folder: Path) -> Plot | None:
    import matplotlib.pyplot as plt

    if not g.attacks and not g.corruptions:
        return None
    cols = 1 + 2 * len(g.attacks)
    severities = sorted({s for _, s, _, _ in g.corruptions})
    cnames = list(dict.fromkeys(n for n, _, _, _ in g.corruptions))
    rows = len(g.ids) + len(cnames)
    width = max(cols, len(severities) + 1)
    fig, axes = plt.subplots(rows, width, figsize=(0.95 * width, 1.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (sid, label) in enumerate(zip(g.ids, g.labels)):
        ax = axes[r][0]
        ax.axis("on")
        pred = g.clean_preds[r]
        _show(ax, g.clean[r], f"id {sid}: y={label}\npred {pred if pred is not None else '?'}",
              "black" if pred in (None, label) else "red")
        for j, a in enumerate(g.attacks):
            for k, (img, title) in enumerate(((a.adversarial[r], f"{a.label}\npred {a.preds[r]}"),
                                              (a.perturbation[r], f"{a.label} delta\nx{a.scale[r]:.3g}"))):
                ax = axes[r][1 + 2 * j + k]
                ax.axis("on")
                _show(ax, img, title, "red" if k == 0 and a.preds[r] != label else "black")
    for i, name in enumerate(cnames):
        r = len(g.ids) + i
        for j, s in enumerate(severities):
            hit = [(img, p) for n, sv, img, p in g.corruptions if n == name and sv == s]
            if hit:
                ax = axes[r][j]
                ax.axis("on")
                img, p = hit[0]
                _show(ax, img, f"{name} s{s}\npred {p if p is not None else '?'}",
                      "red" if p is not None and p != g.labels[0] else "black")
    fig.tight_layout(pad=0.3)
    sources = sorted({a.source for a in g.attacks})
    recomputed = [a for a in g.attacks if a.source == "recomputed"]
    note = ""
    if recomputed:
        same = sum(bool(a.identical) for a in recomputed)
        note = (f" Recomputed (unit 0, stored seeds) for {len(recomputed)} attack(s): {same} reproduce the stored "
                f"outcome of unit 0 exactly" + ("" if same == len(recomputed) else
                                                 f", {len(recomputed) - same} do NOT") + ".")
    budget = eps_label(g.eps) if g.eps else ""
    plot = _save_small(fig, folder, f"gallery_{slug(g.model)}", f"Gallery: {g.model}",
                 f"The run's first {len(g.ids)} images: clean (label y, prediction), each attack at the headline "
                 f"budget {budget} with its prediction (red: wrong) and its perturbation amplified (x factor: +-eps "
                 f"spans black to white); then the first image under each corruption and severity. Adversarial "
                 f"images: {' and '.join(sources) or 'none'}." + note)
    return plot


def gallery_plots(data: RunData, folder: Path) -> list[Plot]:
    """One gallery figure per model (the first ``MAX_MODELS``); [] for a run with neither attacks nor corruptions.
    The plan and models are rebuilt only for images the run did not keep (runs from before gallery files)."""
    if data.evals_of("attack").empty and data.evals_of("corruption").empty:
        return []
    again = _Recompute(data)
    plots = []
    for mk in data.model_keys[:MAX_MODELS]:
        g = model_gallery(data, mk, again)
        p = gallery_figure(g, folder) if g is not None else None
        if p is not None:
            plots.append(p)
    return plots
