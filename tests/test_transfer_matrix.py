"""Transfer evaluations: every model scored on every model's saved images, no attack run again; the diagonal
equals each model's own white-box result sample by sample; the 8-bit (PNG) rounding re-evaluated; the report's
source x target table and heat map; the packaged suite plans the full matrix on the shipped micro models."""
from __future__ import annotations

import pytest

from robustbench_rpc.cli.commands import main
from robustbench_rpc.store.adversarial import quantize_8bit, read_set, unit_files
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import MICRO, RPC_MICRO, run, suite, suite_text

MODELS = [MICRO, RPC_MICRO]
SUITE = suite_text(dict(kind="clean"), dict(kind="attack", attack="pgd", eps=["8/255"], steps=2),
                   dict(kind="transfer", quantize=True), name="tiny-transfer", models=MODELS, batch_size=4, seed=5,
                   limit=16)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("transfer")
    out = root / "run"
    assert run(suite(root, SUITE, "t.toml"), out) == 0
    return out


def _frames(out):
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        names = dict(zip(s.models()["model_key"], s.models()["name"]))
        evals = {k: s.evaluation_info(k) for k in s.evaluations()["eval_key"]}
        samples = s.samples()
    return names, evals, samples


def test_the_diagonal_is_each_models_own_white_box_result(matrix):
    names, evals, samples = _frames(matrix)
    keys = {v: k for k, v in names.items()}
    attack = next(k for k, i in evals.items() if i["kind"] == "attack")
    transfers = {k: i for k, i in evals.items() if i["kind"] == "transfer"}
    assert len(transfers) == 2 * 2  # two sources x float / 8-bit, each scored on both targets
    for ek, info in transfers.items():
        p = info["params"]
        assert p["source_eval"] == attack
        for target, mk in keys.items():
            rows = samples[(samples.model_key == mk) & (samples.eval_key == ek)].set_index("sample_id")
            assert len(rows) == 16
            if p["source_model"] == target and not p["quantize"]:
                own = samples[(samples.model_key == mk) & (samples.eval_key == attack)].set_index("sample_id")
                for col in ("correct1", "pred", "clean_correct1", "linf"):
                    assert rows[col].tolist() == own[col].tolist(), (target, col)


def test_off_diagonal_cells_score_the_source_images_on_the_target(matrix):
    """A transfer cell recomputed by hand: the target classifies the source's saved (or rounded) images."""
    import torch

    from robustbench_rpc.models import load_model
    from robustbench_rpc.data import subsets
    from robustbench_rpc.data.resolve import get_dataset

    names, evals, samples = _frames(matrix)
    keys = {v: k for k, v in names.items()}
    attack = next(k for k, i in evals.items() if i["kind"] == "attack")
    src, tgt = "symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32"
    images = torch.cat([read_set(f)[1] for _, f in sorted(unit_files(matrix, keys[src], attack).items())])
    ds = get_dataset("digits32", {}, {"input_size": (3, 32, 32)})
    pos = subsets.stratified_indices(subsets.labels_of(ds), 16)
    x = torch.stack([ds[i][0] for i in pos])
    y = torch.tensor([int(ds[i][1]) for i in pos])
    model = load_model("rpc_symvit_micro_patch4_32", "packaged", device="cpu")
    for quantize in (False, True):
        ek = next(k for k, i in evals.items() if i["kind"] == "transfer" and i["params"]["source_model"] == src
                  and i["params"]["quantize"] is quantize)
        adv = quantize_8bit(images) if quantize else images
        with torch.no_grad():
            robust = (model(x).argmax(1) == y) & (model(adv).argmax(1) == y)
        rows = samples[(samples.model_key == keys[tgt]) & (samples.eval_key == ek)]
        assert rows["correct1"].tolist() == robust.int().tolist()


def test_the_report_has_the_matrix_and_its_heat_map(matrix):
    report = (matrix / "report.md").read_text()
    assert "## Transfer matrix: pgd Linf eps=8/255" in report
    assert "## Transfer matrix: pgd Linf eps=8/255, rounded to 8 bits" in report
    assert report.count("(white-box)") >= 2
    assert (matrix / "plots" / "transfer_pgd_linf_eps_8_255_heatmap.png").is_file()
    assert (matrix / "tables" / "transfer_pgd_linf_eps_8_255.csv").is_file()


def test_the_packaged_suite_plans_every_source_and_target_on_the_shipped_models(tmp_path):
    from robustbench_rpc.evaluation.plan import Plan, RunConfig

    plan = Plan(RunConfig(suite="transfer-matrix", out=tmp_path / "tm", device="cpu"), log=lambda *_: None)
    transfer = [e for e in plan.evals if e.kind == "transfer"]
    assert len(plan.models) == 6 and len(transfer) == 6 * 2
    assert all(e.save_adversarial for e in plan.evals if e.kind == "attack")
    assert {e.params["source_model"] for e in transfer} == {m.display for m in plan.models}


def test_a_transfer_without_attacks_is_refused_in_one_line(tmp_path, capsys):
    text = SUITE.replace('[[evaluation]]\nkind = "attack"\nattack = "pgd"\neps = ["8/255"]\nsteps = 2\n', "")
    (tmp_path / "t.toml").write_text(text)
    assert main(["run", "--suite", str(tmp_path / "t.toml"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a transfer evaluation needs attack evaluations" in err
