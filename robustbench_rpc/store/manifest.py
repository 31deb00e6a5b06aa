"""Run manifest: what is needed to check a rerun against a stored run.

``build_manifest`` records package versions, the project's git commit (and whether the tree was dirty),
checkpoint sha256 hashes, the sha256 of the evaluated sample ids per dataset, seeds, device, host and a
timestamp. ``compare_manifests`` lists differences, each prefixed with its category:

- ``REPRO:`` differences that can change the numbers (checkpoints, sample ids, seeds, suite / settings /
  precision, code commit, dirty tree);
- ``INFO:`` differences that are expected between machines (package versions, device, host, platform,
  timestamp). Version changes can in principle change numbers too; they are listed, not judged.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..atomic import write_text
from ..models.checkpoint import sha256_of
from .errors import output_error

MANIFEST_VERSION = 1
PACKAGES = ("robustbench-rpc", "torch", "torchvision", "timm", "torchattacks", "pyautoattack",
            "imagecorruptions-imaug", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "scikit-learn",
            "safetensors")
# keys of ``extra`` compared as reproducibility-relevant; any other key is informational
REPRO_EXTRA_KEYS = ("suite", "suite_version", "config", "settings", "precision")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the same digest the model store keys checkpoints by)."""
    return sha256_of(path)


def sample_ids_digest(ids: Iterable[int]) -> dict[str, Any]:
    """n and sha256 of the sorted, de-duplicated sample ids (as canonical JSON), so the order in which
    a harness lists them does not matter."""
    values = sorted({int(i) for i in ids})
    text = json.dumps(values, separators=(",", ":"))
    return {"n": len(values), "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "min": values[0] if values else None, "max": values[-1] if values else None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: str | Path | None = None) -> dict[str, Any] | None:
    """{'commit', 'dirty'} of the git checkout containing ``path`` (default: this package), or None when
    it is not a git checkout or git is unavailable. 'dirty' counts modified and untracked, not ignored,
    files."""
    root = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=20)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": str(device)}
    if str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(device).index
                index = torch.cuda.current_device() if index is None else index
                info["cuda_device_name"] = torch.cuda.get_device_name(index)
                info["cuda_version"] = torch.version.cuda
                info["cudnn_version"] = torch.backends.cudnn.version()
                info["device_count"] = torch.cuda.device_count()
            else:
                info["cuda_device_name"] = None
                info["note"] = "CUDA requested but not available"
        except ImportError:
            info["cuda_device_name"] = None
    return info


def build_manifest(*, seeds: Mapping[str, Any], device: str, checkpoints: Mapping[str, str | Path | None],
                   sample_ids: Mapping[str, Iterable[int]], extra: Mapping[str, Any] | None = None) -> dict:
    """The manifest of a run (a JSON-serializable dict); store it with ``store.set_meta("manifest", m)``.

    ``checkpoints``: model name -> checkpoint path (None for a model without a checkpoint file).
    ``sample_ids``: dataset -> the sample ids evaluated on it.
    ``extra``: anything else to record; its entries named in ``REPRO_EXTRA_KEYS`` (suite, suite_version,
    config, settings, precision) are compared as reproducibility-relevant by :func:`compare_manifests`.
    """
    ckpts: dict[str, dict[str, Any]] = {}
    for name, path in checkpoints.items():
        if path is None:
            ckpts[name] = {"path": None, "sha256": None}
            continue
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint of model {name!r} not found: {p}")
        ckpts[name] = {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    return {
        "manifest_version": MANIFEST_VERSION,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_state(),
        "checkpoints": ckpts,
        "sample_ids": {ds: sample_ids_digest(ids) for ds, ids in sample_ids.items()},
        "seeds": json.loads(json.dumps(dict(seeds), default=str)),
        "device": device_info(device),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "extra": json.loads(json.dumps(dict(extra or {}), default=str)),
    }


class ManifestError(ValueError):
    """A manifest file that is missing, cut short or not a manifest: one line naming the file."""


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as indented JSON to ``path`` atomically (``atomic.write_text``): a kill or a full
    disk leaves the previous file or the new one, never half of it. A write that fails raises
    ``OutputWriteError`` (one line naming the file); the store's copy (meta ``manifest``) is unaffected."""
    path = Path(path)
    try:
        return write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
    except OSError as e:
        raise output_error(path, e, "manifest", "rerun the same command to write it again (nothing is "
                           "recomputed)") from e


def read_manifest(path: str | Path) -> dict:
    """The manifest in ``path`` (a run folder's ``manifest.json``, or the file itself); ManifestError naming
    the file when it is absent, unreadable, not JSON (e.g. cut short) or not a manifest."""
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path
    if not file.is_file():
        raise ManifestError(f"no manifest at {file} (pass a run folder or a manifest.json)")
    try:
        raw = file.read_bytes()
        if raw.startswith(b"SQLite format 3\0"):
            raise ManifestError(f"{file} is a results store, not a manifest: pass its run folder, {file.parent}")
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {file}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"the manifest {file} is not valid JSON ({e}); it may have been cut short: "
                            "rerun that run's command to write it again (nothing is recomputed)") from None
    if not isinstance(data, dict) or "manifest_version" not in data:
        raise ManifestError(f"{file} is not a run manifest (no 'manifest_version' key)")
    return data


def _diff(prefix: str, what: str, a: Any, b: Any, out: list[str]) -> None:
    """Recursive dict diff; one line per differing leaf."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{prefix}: {what}.{k} only in b ({_short(b[k])})")
            elif k not in b:
                out.append(f"{prefix}: {what}.{k} only in a ({_short(a[k])})")
            else:
                _diff(prefix, f"{what}.{k}", a[k], b[k], out)
    elif a != b:
        out.append(f"{prefix}: {what} differs: {_short(a)} vs {_short(b)}")


def _short(v: Any, limit: int = 120) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def compare_manifests(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Differences between two manifests, reproducibility-relevant ones ('REPRO: ...') first, then
    informational ones ('INFO: ...'). Timestamps and argv are ignored. A run made from a dirty git tree
    or without a recorded commit is always reported ('REPRO:'), even against itself, since its code
    state cannot be verified; so an empty list means: same inputs, same clean commit, same machine."""
    repro: list[str] = []
    info: list[str] = []
    ca, cb = a.get("checkpoints") or {}, b.get("checkpoints") or {}
    for name in sorted(set(ca) | set(cb)):
        if name not in ca or name not in cb:
            repro.append(f"REPRO: checkpoint of model {name!r} only in {'b' if name not in ca else 'a'}")
            continue
        ha, hb = (ca[name] or {}).get("sha256"), (cb[name] or {}).get("sha256")
        if ha != hb:
            repro.append(f"REPRO: checkpoint hash of model {name!r} differs: {ha} vs {hb}")
        if (ca[name] or {}).get("path") != (cb[name] or {}).get("path"):
            info.append(f"INFO: checkpoint path of model {name!r} differs: {ca[name].get('path')} vs "
                        f"{cb[name].get('path')}")
    sa, sb = a.get("sample_ids") or {}, b.get("sample_ids") or {}
    for ds in sorted(set(sa) | set(sb)):
        if ds not in sa or ds not in sb:
            repro.append(f"REPRO: sample ids of dataset {ds!r} only in {'b' if ds not in sa else 'a'}")
        elif (sa[ds] or {}).get("sha256") != (sb[ds] or {}).get("sha256"):
            repro.append(f"REPRO: sample ids of dataset {ds!r} differ: n={sa[ds].get('n')} sha256="
                         f"{str(sa[ds].get('sha256'))[:12]} vs n={sb[ds].get('n')} sha256={str(sb[ds].get('sha256'))[:12]}")
    _diff("REPRO", "seeds", a.get("seeds") or {}, b.get("seeds") or {}, repro)
    ea, eb = a.get("extra") or {}, b.get("extra") or {}
    for k in REPRO_EXTRA_KEYS:
        _diff("REPRO", f"extra.{k}", ea.get(k), eb.get(k), repro)
    _diff("INFO", "extra", {k: v for k, v in ea.items() if k not in REPRO_EXTRA_KEYS},
          {k: v for k, v in eb.items() if k not in REPRO_EXTRA_KEYS}, info)
    ga, gb = a.get("git") or {}, b.get("git") or {}
    if ga.get("commit") != gb.get("commit"):
        repro.append(f"REPRO: code commit differs: {ga.get('commit')} vs {gb.get('commit')}")
    for side, g in (("a", ga), ("b", gb)):
        if g.get("dirty"):
            repro.append(f"REPRO: run {side} was made from a dirty git tree (uncommitted changes)")
        if not g:
            repro.append(f"REPRO: run {side} has no git commit recorded")
    _diff("INFO", "versions", a.get("versions") or {}, b.get("versions") or {}, info)
    _diff("INFO", "device", a.get("device") or {}, b.get("device") or {}, info)
    for k in ("hostname", "platform", "manifest_version"):
        if a.get(k) != b.get(k):
            info.append(f"INFO: {k} differs: {a.get(k)} vs {b.get(k)}")
    return repro + info
