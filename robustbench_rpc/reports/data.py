"""Everything a report reads, loaded from ``run_dir/results.sqlite`` (read-only) and nothing else."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store.results import ResultsStore

STORE_FILENAME = "results.sqlite"


def eps_key(eps: Any) -> float:
    return round(float(eps), 10) if eps is not None else float("nan")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower() or "x"


def is_imagenet(dataset: str) -> bool:
    return "imagenet" in str(dataset).lower()


@dataclass
class RunData:
    """The stored results of one run, with helpers shared by tables, plots and comparisons."""

    run_dir: Path
    store: ResultsStore
    models: pd.DataFrame
    evals: pd.DataFrame
    agg: pd.DataFrame
    checks: pd.DataFrame
    meta: dict
    reference_key: str | None = None
    reference_note: str = ""
    names: dict[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path) -> "RunData":
        run_dir = Path(run_dir)
        path = run_dir / STORE_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"no results store at {path}; run an evaluation into {run_dir} first")
        store = ResultsStore(path, readonly=True)
        data = cls(run_dir=run_dir, store=store, models=store.models(), evals=store.evaluations(),
                   agg=store.aggregates(), checks=store.checks(), meta=store.meta())
        data.names = _display_names(data.models)
        data.reference_key, data.reference_note = _resolve_reference(data)
        return data

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------- lookups
    @property
    def model_keys(self) -> list[str]:
        return list(self.models["model_key"]) if "model_key" in self.models else []

    def name(self, model_key: str) -> str:
        return self.names.get(model_key, model_key)

    def info(self, eval_key: str) -> dict:
        row = self.evals[self.evals["eval_key"] == eval_key]
        if row.empty:
            raise KeyError(f"unknown evaluation key {eval_key!r}")
        rec = row.iloc[0].to_dict()
        params = rec.get("params")
        rec["params"] = dict(params) if isinstance(params, dict) else {}
        resolved = rec.get("resolved")
        if isinstance(resolved, dict) and "norm" not in rec["params"] and resolved.get("norm"):
            rec["params"]["norm"] = resolved["norm"]  # a defaulted norm, as the attack ran it
        return rec

    def dynamics(self, model_key: str) -> dict:
        """The model's static/dynamic classification (model info ``dynamics``), {} when not recorded."""
        if "dynamics" not in self.models:
            return {}
        row = self.models[self.models["model_key"] == model_key]
        value = row.iloc[0]["dynamics"] if not row.empty else None
        return dict(value) if isinstance(value, dict) else {}

    def evals_of(self, kind: str) -> pd.DataFrame:
        if self.evals.empty or "kind" not in self.evals:
            return self.evals.iloc[0:0]
        return self.evals[self.evals["kind"] == kind]

    def agg_row(self, model_key: str, eval_key: str) -> dict:
        row = self.agg[(self.agg["model_key"] == model_key) & (self.agg["eval_key"] == eval_key)]
        return row.iloc[0].to_dict()

    def complete(self, model_key: str, eval_key: str) -> bool:
        return bool(self.agg_row(model_key, eval_key)["complete"])

    def complete_pct(self, model_key: str, eval_key: str) -> float:
        r = self.agg_row(model_key, eval_key)
        return 100.0 * r["n"] / r["n_expected"] if r["n_expected"] else float("nan")

    def outcomes(self, model_key: str, eval_key: str) -> pd.DataFrame:
        """Per-sample sample_id, correct1, correct5, confidence of one pair, indexed by sample_id."""
        key = (model_key, eval_key)
        if key not in self._cache:
            df = self.store.samples(model_key, eval_key,
                                    columns=["sample_id", "correct1", "correct5", "confidence"])
            self._cache[key] = df.set_index("sample_id").sort_index()
        return self._cache[key]

    def seeds_text(self) -> str:
        manifest = self.meta.get("manifest") or {}
        seeds = manifest.get("seeds") if isinstance(manifest, dict) else None
        if not seeds:
            suite = self.meta.get("suite") or {}
            seeds = {k: v for k, v in suite.items() if "seed" in k} if isinstance(suite, dict) else None
        if not seeds:
            return "seeds: not recorded"
        return "seeds: " + ", ".join(f"{k}={v}" for k, v in sorted(seeds.items())) + \
            " (per-unit seeds derived from (run seed, evaluation key, unit))"

    def sample_id_hash(self, dataset: str) -> str | None:
        manifest = self.meta.get("manifest") or {}
        ids = (manifest.get("sample_ids") or {}) if isinstance(manifest, dict) else {}
        entries = [v for k, v in ids.items() if k == dataset or str(k).startswith(f"{dataset}:")]
        hashes = sorted({str(v["sha256"])[:12] for v in entries if isinstance(v, dict) and v.get("sha256")})
        return ", ".join(hashes) or None


def _display_names(models: pd.DataFrame) -> dict[str, str]:
    if models.empty:
        return {}
    names = dict(zip(models["model_key"], models["name"]))
    counts = pd.Series(list(names.values())).value_counts()
    return {k: (n if counts[n] == 1 else f"{n} [{k[:6]}]") for k, n in names.items()}


def _resolve_reference(data: RunData) -> tuple[str | None, str]:
    """The reference model: the model named by meta suite.reference_model (matched against key, display
    name, spec and arch) and/or the one model registered with reference=True; when both exist and agree
    (or the suite name is ambiguous), the flagged model."""
    models = data.models
    if models.empty:
        return None, "no models registered"
    suite = data.meta.get("suite") or {}
    wanted = suite.get("reference_model") if isinstance(suite, dict) else None
    flagged = list(models.loc[models["reference"], "model_key"]) if "reference" in models else []
    candidates: list[str] = []
    if wanted:
        for col in ("model_key", "name", "spec", "arch"):
            if col in models:
                candidates += [k for k in models.loc[models[col] == wanted, "model_key"] if k not in candidates]
    if len(flagged) > 1:
        return None, ("several models are flagged reference (" + ", ".join(data.name(k) for k in flagged)
                      + "); none used")
    if flagged:
        k = str(flagged[0])
        if wanted and not candidates:
            return k, (f"reference model: {data.name(k)} (flagged; the suite's reference_model {wanted!r} "
                       "matches no stored model)")
        if candidates and k not in candidates:
            return None, (f"the suite's reference_model {wanted!r} and the model flagged reference "
                          f"({data.name(k)}) disagree; none used")
        return k, f"reference model: {data.name(k)}"
    if len(candidates) == 1:
        return str(candidates[0]), f"reference model (suite): {data.name(candidates[0])}"
    if wanted:
        return None, f"the suite's reference_model {wanted!r} matches {len(candidates)} stored models; none used"
    return None, "no reference model in this run"


def paired(a: pd.DataFrame, b: pd.DataFrame, col: str = "correct1") -> tuple[np.ndarray, np.ndarray, int, int]:
    """Align two per-sample frames on sample_id; returns (a, b, n_common, n_union)."""
    common = a.index.intersection(b.index)
    union = a.index.union(b.index)
    return (a.loc[common, col].to_numpy().astype(bool), b.loc[common, col].to_numpy().astype(bool),
            len(common), len(union))
