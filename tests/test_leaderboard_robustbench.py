"""The leaderboard against RobustBench's own, side by side: every published ``model_info`` JSON of RobustBench
(tests/data/robustbench_model_info, MIT, copied unchanged with its licence) fed to ``robustbench-rpc leaderboard
--published`` and ranked against the order RobustBench's own ``generate_leaderboard`` renders (its
``robustbench/leaderboard/template.py`` with its template ``leaderboard.html.j2``, which the PyPI wheel does not
ship, so the test loads it from the copy), ties included; a parent folder; and exported files read back by
RobustBench's ``ModelInfo``, its leaderboard template and its ``get_leaderboard_bibtex``."""
from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import pandas as pd
import pytest

from robustbench_rpc.cli import commands as cli
from robustbench_rpc.data import robustbench as rbdata
from robustbench_rpc.data.subsets import subset_fingerprint
from robustbench_rpc.store.results import ResultsStore
from test_robustbench_protocol import robustbench_modules

DATA = Path(__file__).parent / "data" / "robustbench_model_info"
MODEL_INFO = DATA / "model_info"
FOLDERS = sorted(f"{p.parent.name}/{p.name}" for p in MODEL_INFO.glob("*/*") if p.is_dir())


def _robustbench():
    """robustbench.utils and robustbench.leaderboard.template, imported with test_robustbench_protocol's shims."""
    utils, template = robustbench_modules("robustbench.utils", "robustbench.leaderboard.template")
    return utils, template


def robustbench_render(monkeypatch, models_folder: Path, dataset: str, threat: str) -> tuple[list[dict], str]:
    """RobustBench's generate_leaderboard on ``models_folder``: the models in the order it renders them (each
    with its file's stem under ``_file``) and the HTML. Only the template's loader and a stem tag are added."""
    import jinja2

    _, template = _robustbench()
    rendered: dict = {}

    class Env(jinja2.Environment):
        def __init__(self, **kw):
            kw["loader"] = jinja2.FileSystemLoader(str(DATA))
            super().__init__(**kw)

        def get_template(self, name, *a, **k):
            t = super().get_template(name, *a, **k)
            render = t.render

            def capture(*args, **kwargs):
                rendered["models"] = list(kwargs["models"])
                return render(*args, **kwargs)
            t.render = capture
            return t

    real_json = json
    tagging = types.SimpleNamespace(load=lambda fp: {**real_json.load(fp), "_file": Path(fp.name).stem})
    monkeypatch.setattr(template, "Environment", Env)
    monkeypatch.setattr(template, "PackageLoader", lambda *a, **k: None)
    monkeypatch.setattr(template, "json", tagging)
    html = template.generate_leaderboard(dataset, threat, str(models_folder))
    return rendered["models"], html


def _board(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "leaderboard.csv")


def rank_disagreements(monkeypatch, board: pd.DataFrame, folder: str) -> tuple[int, int]:
    """(rows whose rank differs from RobustBench's, rows compared). RobustBench's rank of a row: its place in
    the rendered table (loop.index); tied rows (equal get_key) are in file-system order there, so a tie is one
    rank here (1 + the rows strictly above) and must cover the places RobustBench gives the tied rows."""
    utils, _ = _robustbench()
    dataset, threat = folder.split("/")
    models, html = robustbench_render(monkeypatch, MODEL_INFO, dataset, threat)
    assert html.count('class="ranktd"') == len(models) == len(list((MODEL_INFO / folder).glob("*.json")))
    acc_field = utils.ACC_FIELDS[utils.ThreatModel(threat)]
    key = {m["_file"]: utils.get_key(m, acc_field) for m in models}
    place = {m["_file"]: i + 1 for i, m in enumerate(models)}
    assert [key[m["_file"]] for m in models] == sorted(key.values(), reverse=True)  # what RobustBench renders
    ours = board.drop_duplicates("row_id").set_index("model")["rank"]
    bad = 0
    for name, k in key.items():
        tied = [n for n, v in key.items() if v == k]
        first = 1 + sum(v > k for v in key.values())
        places = sorted(place[n] for n in tied)
        ok = name in ours.index and ours[name] == first and places == list(range(first, first + len(tied)))
        bad += not ok
    return bad, len(key)


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_published_folder_ranks_as_robustbench_renders_it(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "board"
    assert cli.main(["leaderboard", "--published", str(MODEL_INFO / folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    board = _board(out)
    assert set(board["board"]) == {1} and "RobustBench (published)" in printed
    bad, n = rank_disagreements(monkeypatch, board, folder)
    capsys.readouterr()
    print(f"{folder}: {bad} of {n} ranks differ from RobustBench's rendered order")
    assert n == len(list((MODEL_INFO / folder).glob("*.json"))) and bad == 0
    ranked = board[board["ranked_by"]]
    assert ranked["column"].nunique() == 1
    threat = folder.split("/")[1]
    assert ranked["column"].iloc[0].startswith("corruption acc" if threat == "corruptions" else "best known")
    assert not board["column"].str.contains("nan|0.031|0.003922").any()  # one budget column per folder


def test_parent_folder_gives_one_board_per_folder_and_no_replaced_number(tmp_path, capsys):
    out = tmp_path / "board"
    assert cli.main(["leaderboard", "--published", str(MODEL_INFO), "--out", str(out)]) == 0
    board = _board(out)
    assert board["board"].nunique() == len(FOLDERS) == 7
    fields = {"clean": "clean_acc", "AutoAttack standard": "autoattack_acc", "corruption acc (RobustBench":
              "corruptions_acc", "mCE": "corruptions_mce", "corruption acc (3D": "corruptions_acc_3d"}
    checked = 0
    for path in sorted(MODEL_INFO.rglob("*.json")):
        dataset, threat = path.parent.parent.name, path.parent.name
        info = json.loads(path.read_text())
        rows = board[board["row_id"] == f"published:{dataset}:{threat}:{path.stem}"]
        assert rows["board"].nunique() == 1, path  # one row, on the board of the folder it sits in
        assert rows["board_title"].iloc[0].startswith(f"{dataset} {threat}:")
        for _, r in rows.iterrows():
            field = next(f for start, f in fields.items() if r["column"].startswith(start)) \
                if not r["column"].startswith("best known") else \
                ("external" if "external" in info else "autoattack_acc")
            assert r["value"] == pytest.approx(float(info[field]) / 100, abs=1e-12), (path, r["column"])
            checked += 1
    assert checked >= 236 * 2
    # the five files under cifar100/ whose dataset field says cifar10 stay on the CIFAR-100 boards
    hendrycks = board[board["model"] == "Hendrycks2019Using"]
    assert set(hendrycks["board_title"].str.split(":").str[0]) == {"cifar10 Linf", "cifar100 Linf"}
    assert hendrycks["row_id"].nunique() == 2
    md = (out / "leaderboard.md").read_text()
    assert "its 'dataset' field says 'cifar10'; RobustBench reads the folder it sits in (cifar100)" in md


def test_external_unreliable_footnote_and_extra_data_are_shown(tmp_path):
    out = tmp_path / "board"
    assert cli.main(["leaderboard", "--published", str(MODEL_INFO / "imagenet" / "Linf"), "--published",
                     str(MODEL_INFO / "cifar10" / "Linf"), "--out", str(out)]) == 0
    board = _board(out)
    swin = board[board["model"] == "Amini2024MeanSparse_Swin-L"]
    best = swin[swin["column"] == "best known Linf 4/255"].iloc[0]
    aa = swin[swin["column"] == "AutoAttack standard Linf 4/255"].iloc[0]
    assert best["value"] == pytest.approx(0.5892) and aa["value"] == pytest.approx(0.6212) and best["rank"] == 3
    assert "external evaluation" in best["flags"]
    xiao = board[(board["model"] == "Xiao2020Enhancing") & (board["column"] == "best known Linf 8/255")].iloc[0]
    assert xiao["value"] == pytest.approx(0.074) and "AA eval. potentially unreliable" in xiao["flags"]
    md = (out / "leaderboard.md").read_text()
    # RobustBench's footnotes are HTML for its page: here plain text, the link's address kept
    assert "7.40% robust accuracy is due to 1 restart of APGD-CE and 30 restarts of Square Attack Note: this " \
           "adaptive evaluation (https://arxiv.org/abs/2002.08347)" in md and "<br>" not in md
    extra = json.loads((MODEL_INFO / "cifar10" / "Linf" / "Carmon2019Unlabeled.json").read_text())
    assert extra["additional_data"] is True
    assert "extra data" in board[board["model"] == "Carmon2019Unlabeled"]["flags"].iloc[0]
    # the six files that write 8/255 as "0.031" rank with the 8/255 rows, with a note
    eps031 = [p.stem for p in (MODEL_INFO / "cifar10" / "Linf").glob("*.json")
              if json.loads(p.read_text()).get("eps") == "0.031"]
    assert len(eps031) == 6
    ranked = board[board["ranked_by"] & board["model"].isin(eps031)]
    assert len(ranked) == 6 and set(ranked["column"]) == {"best known Linf 8/255"}
    assert "eps written '0.031', not 8/255: ranked in the 8/255 column of its folder" in md
    assert ranked["flags"].str.contains("eps not the folder's: 0.031").all()


# --------------------------------------------------------------------------------------- export

def imagenet_run(folder: Path, model: str, counts: dict[str, int], reduced: bool = False,
                 checkpoint: str | None = None, corruptions: dict[tuple[str, int], int] | None = None) -> Path:
    """A store shaped like ``run --suite robustbench`` on RobustBench's 5,000 ImageNet ids plus the adaptive
    preset's APGD (marked ``adaptive = true``) at the same budget; ``counts``: correct images per
    evaluation (the adaptive attack's correct set is a subset of AutoAttack's)."""
    folder.mkdir()
    entries = rbdata.imagenet_test_ids()
    subset = {"method": "file", "file": rbdata.IMAGENET_SUBSET, "entries": 5000, "sha256": subset_fingerprint(entries)}
    eps = 4 / 255
    aa = {"norm": "Linf", "eps": eps, "version": "custom" if reduced else "standard"}
    with ResultsStore(folder / "results.sqlite") as s:
        s.set_meta("settings", {"dataset": "imagenet", "subset": subset})
        sha = checkpoint or model.encode().hex().ljust(64, "0")
        s.register_model("m1", {"name": model, "arch": model, "checkpoint_sha256": sha, "kwargs": {},
                                "num_classes": 1000, "mean": [0.5] * 3, "std": [0.5] * 3, "precision": "fp32"})
        common = {"dataset": "imagenet", "n_samples": 5000, "dataset_size": 50000, "subset": subset, "seed": 0}
        s.register_evaluation("clean", {**common, "kind": "clean", "name": "clean", "params": {}})
        s.register_evaluation("aa", {**common, "kind": "attack", "name": "autoattack", "params": aa,
                                     "resolved": {**aa, "n_iter": 2 if reduced else 100}})
        s.register_evaluation("apgd", {**common, "kind": "attack", "name": "apgd",
                                       "params": {"norm": "Linf", "eps": eps, "loss": "dlr", "adaptive": True},
                                       "resolved": {"norm": "Linf", "eps": eps, "loss": "dlr", "n_iter": 100}})
        # a given adversarial set, as evaluate-external stores it (evaluation/external.py external_spec)
        s.register_evaluation("ext", {**common, "kind": "external", "name": "external Linf eps=4/255 sha256:ab12",
                                      "params": {"external": True, "adversarial_sha256": "ab12" * 16,
                                                 "adversarial_format": "robustbench-pt", "norm": "Linf",
                                                 "eps": eps, "accuracy": "robust"},
                                      "resolved": {"file": str(folder / "given.pt")}})
        for (name, severity), k in (corruptions or {}).items():
            key = f"{name}-{severity}"
            s.register_evaluation(key, {**common, "dataset": "imagenet-c", "kind": "corruption", "name": name,
                                        "params": {"corruption": name, "severity": severity,
                                                   "source": "imagenet-c"}})
            counts = {**counts, key: k}
        for key, k in counts.items():
            correct = [1] * k + [0] * (5000 - k)
            s.write_unit("m1", key, 0, {"sample_id": list(range(5000)), "label": [0] * 5000,
                                        "pred": [0 if c else 1 for c in correct], "correct1": correct,
                                        "correct5": correct, "confidence": [0.9] * 5000})
    return folder


def test_export_loads_in_robustbench_and_adaptive_worst_case_goes_out_as_external(tmp_path, monkeypatch, capsys):
    strong = imagenet_run(tmp_path / "strong", "my_vit", {"clean": 3896, "aa": 2982, "apgd": 2750})
    plain = imagenet_run(tmp_path / "plain", "my_deit", {"clean": 3700, "aa": 2500, "apgd": 2500})
    reduced = imagenet_run(tmp_path / "reduced", "my_reduced", {"clean": 3600, "aa": 2400}, reduced=True)
    given = imagenet_run(tmp_path / "given", "my_malt", {"clean": 3800, "aa": 3000, "ext": 2600})
    out = tmp_path / "board"
    assert cli.main(["leaderboard", str(strong), str(plain), str(reduced), str(given), "--out", str(out),
                     "--published",
                     str(MODEL_INFO / "imagenet" / "Linf"), "--export-model-info"]) == 0
    printed = capsys.readouterr().out
    board = _board(out)
    # our adaptive worst case is the row's best known accuracy and ranks it, as RobustBench's external does
    mine = board[(board["model"] == "my_vit") & board["ranked_by"]].iloc[0]
    assert mine["column"] == "best known Linf 4/255" and mine["value"] == pytest.approx(0.55)
    exported = out / "model_info" / "imagenet" / "Linf"
    vit = json.loads((exported / "my_vit.json").read_text())
    assert vit["autoattack_acc"] == "59.64" and vit["external"] == "55.0" and vit["clean_acc"] == "77.92"
    assert "apgd" in vit["footnote"] and "AutoAttack standard" in vit["footnote"]
    # a given adversarial set (evaluate-external) at the same budget ranks the row and goes out as external
    malt = board[(board["model"] == "my_malt") & board["ranked_by"]].iloc[0]
    assert malt["value"] == pytest.approx(0.52)
    assert "external set Linf 4/255 sha256:ab12ab12ab12" in set(board[board["model"] == "my_malt"]["column"])
    given_doc = json.loads((exported / "my_malt.json").read_text())
    assert given_doc["external"] == "52.0" and given_doc["autoattack_acc"] == "60.0"
    assert "external set Linf 4/255 sha256:ab12ab12ab12" in given_doc["footnote"]
    deit = json.loads((exported / "my_deit.json").read_text())
    assert "external" not in deit and deit["autoattack_acc"] == "50.0"  # the adaptive attack lowered nothing
    assert vit["venue"] == "N/A" and all(v is not None for v in (vit["name"], vit["authors"], vit["link"]))
    # a reduced AutoAttack never goes out under autoattack_acc: not exported, and the CLI says why
    assert not (exported / "my_reduced.json").exists()
    assert "not exported: my_reduced Linf: AutoAttack (reduced) Linf 4/255" in printed
    assert "model_info: 3 JSON file(s)" in printed

    utils, _ = _robustbench()
    allowed = {f.name for f in dataclasses.fields(utils.ModelInfo)} | {"external", "unreliable"}
    for path in exported.glob("*.json"):
        doc = json.loads(path.read_text())
        assert set(doc) <= allowed, path  # RobustBench's fields and nothing else
        utils.ModelInfo(**{k: v for k, v in doc.items() if k not in ("external", "unreliable")})
    # RobustBench's own leaderboard over its published folder plus our two files: ours sit where their best
    # known accuracy puts them
    merged = tmp_path / "merged" / "model_info" / "imagenet" / "Linf"
    shutil.copytree(MODEL_INFO / "imagenet" / "Linf", merged)
    for path in exported.glob("*.json"):
        shutil.copy(path, merged / path.name)
    models, html = robustbench_render(monkeypatch, tmp_path / "merged" / "model_info", "imagenet", "Linf")
    assert "my_vit" in html and "None%" not in html
    order = [m["_file"] for m in models]
    ours = board[board["ranked_by"]].drop_duplicates("row_id").set_index("model")["rank"]
    for name in ("my_vit", "my_deit", "my_malt"):
        assert order.index(name) + 1 == ours[name], name
    monkeypatch.chdir(tmp_path / "merged")
    entries, text = utils.get_leaderboard_bibtex("imagenet", "Linf")
    assert entries and "my_vit" not in text  # N/A venue: skipped, as RobustBench skips its own N/A rows


def test_board_csv_ranks_are_integers_and_eps_labels_use_the_spec(tmp_path):
    out = tmp_path / "board"
    pub = tmp_path / "model_info" / "cifar10" / "Linf"
    pub.mkdir(parents=True)
    for name, eps, aa in (("A", "1/255", "70.0"), ("B", "1/255", None), ("C", "2/255", "60.0")):
        doc = {"name": name, "dataset": "cifar10", "eps": eps, "clean_acc": "90.0"}
        if aa:
            doc["autoattack_acc"] = aa
        (pub / f"{name}.json").write_text(json.dumps(doc))
    assert cli.main(["leaderboard", "--published", str(pub), "--out", str(out)]) == 0
    board = _board(out)
    ranks = pd.read_csv(out / "leaderboard.csv", dtype=str)["rank"].dropna()
    assert len(ranks) and ranks.str.fullmatch(r"\d+").all()  # "1", never "1.0", beside unranked rows
    assert "best known Linf 1/255" in set(board["column"]) and not board["column"].str.contains("0.003922").any()
    assert board[board["model"] == "B"]["rank"].isna().all()  # no robust number: unranked, still integer column


def test_a_corruption_set_smaller_than_robustbenchs_is_not_exported_under_its_fields(tmp_path, capsys):
    three = {(c, sev): 3000 - 100 * sev for c in ("gaussian_noise", "fog", "jpeg_compression") for sev in (1, 3, 5)}
    run = imagenet_run(tmp_path / "c", "my_vit", {"clean": 3896, "aa": 2982}, corruptions=three)
    out = tmp_path / "board"
    assert cli.main(["leaderboard", str(run), "--out", str(out), "--export-model-info"]) == 0
    printed = capsys.readouterr().out
    assert "not exported: my_vit corruptions: corruption acc (3 corruptions x 3 severities)" in printed
    assert not (out / "model_info" / "imagenet" / "corruptions").exists()
    doc = json.loads((out / "model_info" / "imagenet" / "Linf" / "my_vit.json").read_text())
    assert doc["corruptions_acc"] is None and doc["autoattack_acc"] == "59.64"
