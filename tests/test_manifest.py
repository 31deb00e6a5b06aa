"""Run manifest: hashes, versions, git state, JSON round trip through the store, comparison."""
from __future__ import annotations

import copy
import hashlib
import json

import pytest

from robustbench_rpc.store.manifest import (
    build_manifest, compare_manifests, git_state, sample_ids_digest, sha256_file,
)
from robustbench_rpc.store.results import ResultsStore


@pytest.fixture
def manifest(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    return build_manifest(seeds={"run": 0, "attack": 1}, device="cpu",
                          checkpoints={"rpc_vit": ckpt, "random_init": None},
                          sample_ids={"cifar10": [5, 3, 1, 2], "cifar10-c": range(100)},
                          extra={"suite": {"name": "quick", "eps": [8 / 255]}, "note": "hello"})


def test_contents(manifest, tmp_path):
    ck = manifest["checkpoints"]["rpc_vit"]
    assert ck["sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest() == sha256_file(tmp_path / "model.safetensors")
    assert manifest["checkpoints"]["random_init"]["sha256"] is None
    assert manifest["sample_ids"]["cifar10"]["n"] == 4
    assert manifest["sample_ids"]["cifar10"] == sample_ids_digest([1, 2, 3, 5])  # order does not matter
    v = manifest["versions"]
    assert v["python"] and v["numpy"] and "torch" in v and "imagecorruptions-imaug" in v and "pyautoattack" in v
    assert manifest["device"]["name"] == "cpu" and manifest["hostname"] and manifest["timestamp"]
    assert manifest["seeds"] == {"run": 0, "attack": 1}
    git = manifest["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) is None


def test_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="rpc_vit"):
        build_manifest(seeds={}, device="cpu", checkpoints={"rpc_vit": tmp_path / "nope"}, sample_ids={})


def test_round_trip_through_store(manifest, tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as s:
        s.set_meta("manifest", manifest)
    with ResultsStore(tmp_path / "results.sqlite", readonly=True) as s:
        back = s.get_meta("manifest")
    assert back == json.loads(json.dumps(manifest))
    assert [d for d in compare_manifests(manifest, back) if "dirty" not in d and "no git" not in d] == []


def test_compare_flags_changed_checkpoint_hash(manifest):
    other = copy.deepcopy(manifest)
    other["checkpoints"]["rpc_vit"]["sha256"] = "f" * 64
    other["hostname"] = "another-machine"
    other["versions"]["torch"] = "0.0.1"
    diffs = compare_manifests(manifest, other)
    repro = [d for d in diffs if d.startswith("REPRO:")]
    info = [d for d in diffs if d.startswith("INFO:")]
    assert any("checkpoint hash of model 'rpc_vit' differs" in d for d in repro)
    assert any("hostname" in d for d in info) and any("versions.torch" in d for d in info)
    assert not any("hostname" in d or "torch" in d for d in repro)
    assert diffs.index(repro[0]) < diffs.index(info[0])  # reproducibility issues first


def test_compare_flags_sample_ids_seeds_and_suite(manifest):
    other = copy.deepcopy(manifest)
    other["sample_ids"]["cifar10"] = sample_ids_digest([1, 2, 3])
    other["seeds"]["run"] = 1
    other["extra"]["suite"]["eps"] = [4 / 255]
    other["extra"]["note"] = "changed"
    diffs = compare_manifests(manifest, other)
    assert any(d.startswith("REPRO: sample ids of dataset 'cifar10'") for d in diffs)
    assert any(d.startswith("REPRO: seeds.run") for d in diffs)
    assert any(d.startswith("REPRO: extra.suite.eps") for d in diffs)
    assert any(d.startswith("INFO: extra.note") for d in diffs)
