"""The probe of the "nothing lost, nothing silent" classes, tried as a hostile new user would: each test drives one
mistake or accident through the path a user takes (the ``robustbench-rpc`` command line, ``benchmark()``, a suite)
on tiny inputs and asserts its one-line outcome, so the next round starts from this table:

- work lost or overwritten: a folder the user (or another command) owns is refused, never written into;
- silent wrong or stale numbers: a value that cannot be meant, or a damaged file, is refused, never used;
- late failures and tracebacks: a mistake is found before compute, and a fault or an interrupt is one line.

Tests are grouped by the surface they probe: ``test_train_*`` (the ``train`` command), ``test_cli_*`` (the
command line's start-up), ``test_suite_*`` (suite files); other surfaces follow in their own sections.
"""
from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from robustbench_rpc.cli import commands
from robustbench_rpc.cli.commands import main
from robustbench_rpc.cli.startup import INTERRUPTED
from robustbench_rpc.models import read_checkpoint_metadata
from tiny_runs import suite_text

# ------------------------------------------------------------------------------------------------ train

#: the smallest training the CLI runs: a 1-block micro ViT, 32 digits, 2 steps of 16, one epoch
TINY_TRAIN = ["train", "--model", "symvit_micro_patch4_32", "--model-arg", "depth=1", "--model-arg", "embed_dim=16",
              "--model-arg", "num_heads=2", "--set", "data.limit=32", "--batch-size", "16", "--set",
              "validation.limit=16", "--set", "validation.steps=1", "--epochs", "1", "--no-progress", "--workers", "0"]


def _train(out: Path, *flags: str) -> int:
    return main([*TINY_TRAIN, *flags, "--out", str(out)])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_train_refuses_a_folder_of_the_users_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,my_numbers\n1,0.5\n")
    assert _train(out) == 2
    err = _one_line_error(capsys)
    assert f"--out {out} is a folder of other files, holding metrics.csv: not a train folder (no state.pt); " \
        "train would overwrite last.safetensors, best.safetensors, metrics.csv, curves.png and state.pt there" \
        in err, err
    assert (out / "metrics.csv").read_text() == "epoch,my_numbers\n1,0.5\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]  # nothing written beside it


def test_train_refuses_an_evaluation_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"SQLite format 3\x00")
    (out / "index.html").write_text("<html>the run's report</html>")
    assert _train(out) == 2
    err = _one_line_error(capsys)
    assert "is an evaluation run folder (of robustbench-rpc run), holding index.html, results.sqlite: not a train " \
        "folder" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.sqlite"]


@pytest.mark.parametrize("flags, key", [
    (["--lr", "inf"], "--lr: optim.lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr: optim.lr must be a finite number, got nan"),
    (["--set", "optim.weight_decay=inf"], "optim.weight_decay must be a finite number, got inf"),
    (["--set", "optim.clip_grad=nan"], "optim.clip_grad must be a finite number, got nan"),
    (["--set", "objective.beta=inf"], "objective.beta must be a finite number, got inf"),
])
def test_train_refuses_non_finite_recipe_numbers(tmp_path, capsys, flags, key):
    out = tmp_path / "o"
    assert _train(out, *flags) == 2
    assert key in _one_line_error(capsys)
    assert not out.exists()


def test_train_stops_at_a_non_finite_loss_naming_the_step(tmp_path, capsys):
    out = tmp_path / "o"
    assert _train(out, "--lr", "1e30", "--warmup-epochs", "0") == 2  # finite, but the first update overflows
    err = _one_line_error(capsys)
    assert "error: training step 2 of epoch 1: the loss is nan at learning rate 5e+29 (optim.lr 1e+30)" in err, err
    assert not (out / "last.safetensors").exists() and not (out / "state.pt").exists()  # no NaN weights saved


@pytest.mark.parametrize("eps, expected", [
    ("300/255", "--eps: objective.eps is beyond the Linf range of pixel-space images (values in [0, 1], so eps "
                "<= 1), got 1.17647"),
    ("8", "--eps: objective.eps is beyond the Linf range of pixel-space images (values in [0, 1], so eps <= 1) "
          "(did you mean '8/255'?), got 8.0"),
])
def test_train_refuses_eps_beyond_the_pixel_range_as_run_does(tmp_path, capsys, eps, expected):
    assert _train(tmp_path / "o", "--objective", "pgd-at", "--eps", eps) == 2
    assert expected in _one_line_error(capsys)


def _flip_a_weight_byte(state: Path) -> None:
    """Flip one byte inside a tensor's storage of the torch payload (not its zip directory, which torch checks)."""
    data = bytearray(state.read_bytes())
    start = data.index(b"\n") + 1 if data.startswith(b"robustbench-rpc") else 0
    with zipfile.ZipFile(io.BytesIO(bytes(data[start:]))) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    local = start + info.header_offset
    name_len, extra_len = int.from_bytes(data[local + 26:local + 28], "little"), \
        int.from_bytes(data[local + 28:local + 30], "little")
    data[local + 30 + name_len + extra_len + info.file_size // 2] ^= 0x40
    state.write_bytes(bytes(data))


def test_train_refuses_a_training_state_with_one_flipped_byte(tmp_path, capsys):
    out = tmp_path / "o"
    assert _train(out) == 0
    capsys.readouterr()
    assert _train(out) == 0 and "already trained (1/1 epochs)" in capsys.readouterr().out  # intact: resumable
    _flip_a_weight_byte(out / "state.pt")
    assert _train(out) == 2
    err = _one_line_error(capsys)
    assert f"{out / 'state.pt'}: the training state is damaged: its sha256 is" in err, err


def _image_folder(root: Path, bad: bool = True) -> Path:
    gen = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            arr = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    if bad:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def test_train_refuses_an_unreadable_image_before_training_with_a_flag_it_takes(tmp_path, capsys):
    root = _image_folder(tmp_path / "images")
    out = tmp_path / "o"
    folder = ["--dataset", "folder", "--data-root", str(root), "--model-arg", "num_classes=2",
              "--set", "validation.holdout=0.25",
              "--set", "data.limit=0", "--set", "validation.limit=0"]
    assert _train(out, *folder) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "broken.png" in err and "rerun with --skip-unreadable" in err, err
    assert "epoch" not in captured.out and not (out / "state.pt").exists()  # found before the first step
    assert _train(out, *folder, "--skip-unreadable") == 0  # the flag the hint names: train takes it
    meta = read_checkpoint_metadata(out / "last.safetensors")
    assert [Path(p).name for p in meta["data"]["unreadable_left_out"]] == ["broken.png"]
    assert meta["data"]["n_train"] == 9  # 12 readable images, 3 held out for validation
    capsys.readouterr()
    (root / "dog" / "broken.png").unlink()
    assert _train(out, *folder) == 2  # a resume must read the images it was trained on, chosen the same way
    assert "was trained with --skip-unreadable" in _one_line_error(capsys)


def test_train_full_disk_at_a_checkpoint_write_is_one_line_and_resumes_bit_identically(tmp_path, capsys,
                                                                                       monkeypatch):
    two = ["--epochs", "2"]
    assert _train(tmp_path / "ref", *two) == 0
    from robustbench_rpc.training import loop

    real = loop.save_checkpoint

    def full_in_epoch_2(model, path, metadata):
        if metadata["checkpoint"]["epoch"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(model, path, metadata)

    out = tmp_path / "o"
    monkeypatch.setattr(loop, "save_checkpoint", full_in_epoch_2)
    capsys.readouterr()
    assert _train(out, *two) == 2
    err = _one_line_error(capsys)
    assert (f"cannot write {out / 'last.safetensors'} at the end of epoch 2: No space left on device (" in err
            and "MiB free there); epoch 1's files and state are kept: free space and rerun" in err), err
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert _train(out, *two) == 0
    assert "resuming after epoch 1/2" in capsys.readouterr().out
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "ref" / name), load_file(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


# --------------------------------------------------------------------------------------- CLI start-up

_INTERRUPT_AT_IMPORT = """
import os, signal, sys


class _InterruptAt:
    '''Ctrl-C as a user presses it while the command line imports the module named in the environment.'''

    def find_spec(self, name, path=None, target=None):
        if name == os.environ["INTERRUPT_AT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, _InterruptAt())
"""


@pytest.mark.parametrize("entry", ["console script", "python -m"])
@pytest.mark.parametrize("module", ["torch", "numpy._core.memmap"])  # numpy's C initialisation lost the interrupt
def test_cli_ctrl_c_while_importing_is_one_line_and_exit_130(tmp_path, entry, module):
    import importlib.util

    if importlib.util.find_spec(module.rpartition(".")[0] or module) is None:
        pytest.skip(f"no {module} in this environment")
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_AT_IMPORT)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "INTERRUPT_AT": module}
    cmd = ([str(Path(sys.executable).parent / "robustbench-rpc")] if entry == "console script"
           else [sys.executable, "-m", "robustbench_rpc"])
    # SIGINT as a terminal delivers it: a test suite started in the background inherits SIGINT ignored
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.run([*cmd, "models"], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=restore_sigint)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (130, INTERRUPTED, ""), proc.stderr


def test_cli_ctrl_c_while_parsing_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "build_parser", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == INTERRUPTED


# --------------------------------------------------------------------------------------------- suites

@pytest.mark.parametrize("version, shown", [('"one"', "'one'"), ("1.5", "1.5"), ("0", "0"), ("true", "True")])
def test_suite_version_must_be_a_whole_number(tmp_path, capsys, version, shown):
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "s"\nversion = {version}\n[defaults]\ndataset = "digits32"\nlimit = 8\n'
                     '[[evaluation]]\nkind = "clean"\n')
    out = tmp_path / "run"
    rc = main(["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged", "--out", str(out),
               "--no-report", "--no-progress"])
    assert rc == 2
    err = _one_line_error(capsys)
    assert f"s.toml: version must be a whole number >= 1 (the suite's own revision, e.g. version = 2), got {shown}" \
        in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------- evaluations (run, API)

EVAL_SUITE = suite_text(dict(kind="clean"), name="probe", models=None, batch_size=8, limit=16)
OOD = '\n[[evaluation]]\nkind = "ood"\ndataset = "digits32-ood"\n'


def _eval_plugin(tmp_path: Path, body: str) -> str:
    import textwrap

    path = tmp_path / f"probe_plugin_{abs(hash(str(tmp_path))) % 10 ** 9}.py"  # one module name per file
    path.write_text("import torch\nfrom torch import nn\nimport robustbench_rpc\n" + textwrap.dedent(body))
    return str(path)


def _eval_suite(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "probe.toml"
    path.write_text(EVAL_SUITE + extra)
    return str(path)


def _err_line(capsys) -> str:
    """The run's one-line error (run errors print ``error: ...``; faults during a run print one line too)."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err, err
    return err


def test_eval_a_model_returning_probabilities_is_refused_before_compute_without_any_attack(tmp_path, capsys):
    plugin = _eval_plugin(tmp_path, """
        @robustbench_rpc.register_model("probs_model", input_size=32, mean=0.5, std=0.25, num_classes=10)
        def probs_model(**kw):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Softmax(dim=1))
        """)
    out = tmp_path / "run"
    rc = main(["--plugin", plugin, "run", "--suite", _eval_suite(tmp_path, OOD), "--model", "probs_model",
               "--out", str(out), "--no-report", "--no-progress"])
    assert rc == 1
    err = _err_line(capsys)
    assert "model probs_model returns probabilities, not logits" in err and "drop the final softmax" in err, err
    assert not (out / "results.sqlite").exists() or _stored_units(out) == 0  # refused before any unit


def _stored_units(out: Path) -> int:
    import sqlite3

    with sqlite3.connect(out / "results.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]


def test_eval_a_plain_function_attack_beyond_its_eps_is_caught_by_the_budget_check(tmp_path, capsys):
    plugin = _eval_plugin(tmp_path, """
        from robustbench_rpc.attacks import register_attack

        @register_attack("overshoot_fn")
        def overshoot_fn(eps=8 / 255, steps=1, seed=None):
            '''A plain factory returning a plain function, as register_attack allows: no eps attribute.'''
            def run(model, x, y):
                return (x + 1.5 * eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
            return run
        """)
    attack = '\n[[evaluation]]\nkind = "attack"\nattack = "overshoot_fn"\neps = "4/255"\n'
    out = tmp_path / "run"
    rc = main(["--plugin", plugin, "run", "--suite", _eval_suite(tmp_path, attack), "--model",
               "symvit_micro_patch4_32:packaged", "--out", str(out), "--no-report", "--no-progress"])
    assert rc == 1
    err = _err_line(capsys)
    assert "attack 'overshoot_fn' (eps 0.0156863, norm Linf, pixel units) broke its threat model" in err, err
    assert "exceeds eps" in err and "unit 0" in err, err
    assert _stored_units(out) == 2  # the clean evaluation's units only: no image beyond eps was stored


def test_eval_a_plain_function_attack_within_its_eps_runs_and_records_its_budget():
    from robustbench_rpc.attacks import ATTACKS, attack_outcomes, get_attack, register_attack

    def within(eps=8 / 255, seed=None):
        return lambda model, x, y: (x + eps * torch.sign(torch.randn_like(x))).clamp(0, 1)

    register_attack("within_fn")(within)
    try:
        attack = get_attack("within_fn", eps=4 / 255, seed=0)
        assert (attack.eps, attack.norm, attack.space, attack.clip) == (4 / 255, "Linf", "pixel", True)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
        out = attack_outcomes(model, attack, torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1]))
        assert float(out.linf.max()) <= 4 / 255 + 1e-6
    finally:
        ATTACKS._items.pop("within_fn", None)


def test_eval_the_same_attack_written_twice_with_its_default_spelled_out_is_computed_once(tmp_path, capsys):
    pgd = '\n[[evaluation]]\nkind = "attack"\nattack = "pgd"\neps = "2/255"\nsteps = 2\n'
    suite = _eval_suite(tmp_path, pgd + pgd.replace("steps = 2\n", 'steps = 2\nnorm = "Linf"\n'))
    out = tmp_path / "run"
    assert main(["run", "--suite", suite, "--model", "symvit_micro_patch4_32:packaged", "--out", str(out),
                 "--no-report", "--no-progress"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "computed once" in ln]
    assert len(notes) == 1 and "is declared twice (" in notes[0] and "norm=Linf" in notes[0], notes
    import sqlite3

    with sqlite3.connect(out / "results.sqlite") as con:
        evaluated = con.execute("SELECT COUNT(DISTINCT eval_key) FROM units").fetchone()[0]
    assert evaluated == 2  # clean + one PGD, not two


# ------------------------------------------------------------------------------------- moved files

_CLEAN_SUITE = ('name = "s"\nversion = 1\n[defaults]\ndataset = "digits32"\nbatch_size = 4\n'
                '[[evaluation]]\nkind = "clean"\n')


def _stored_units(out: Path) -> int:
    import sqlite3

    with sqlite3.connect(out / "results.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]


def test_cli_run_resumes_after_its_checkpoint_subset_file_or_clone_moved(tmp_path, capsys):
    """A checkpoint is its bytes (sha256) and a subset file its entries, as ``verify`` compares them: the path
    they were read from is information only, so moving them (or the whole clone) leaves the run resumable."""
    import shutil
    import sqlite3

    from robustbench_rpc.models import PACKAGED_DIR

    suite = tmp_path / "s.toml"
    suite.write_text(_CLEAN_SUITE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(PACKAGED_DIR / "symvit_micro_patch4_32.safetensors", tmp_path / "a" / "m.safetensors")
    from robustbench_rpc.evaluation.plan import Plan, RunConfig

    digits = Plan(RunConfig(suite="quick", limit=8, out=tmp_path / "plan")).base_dataset("digits32")
    (tmp_path / "a" / "ids.txt").write_text("\n".join(str(int(digits[i][2])) for i in range(len(digits))))
    out = tmp_path / "run"

    def run(where: str, model: str | None = None, folder: Path = out) -> int:
        ckpt = f"symvit_micro_patch4_32:{tmp_path / where / 'm.safetensors'}"
        return main(["run", "--suite", str(suite), "--model", model or ckpt, "--subset",
                     str(tmp_path / where / "ids.txt"), "--out", str(folder), "--no-report", "--no-progress"])

    assert run("a") == 0
    units = _stored_units(out)
    for name in ("m.safetensors", "ids.txt"):
        shutil.move(tmp_path / "a" / name, tmp_path / "b" / name)
    capsys.readouterr()
    assert run("b") == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert f"checkpoint {tmp_path}/b/m.safetensors: the same bytes (sha256 " in said and \
        f"as {tmp_path}/a/m.safetensors, recorded when this run started; resuming" in said, said
    assert _stored_units(out) == units  # resumed: nothing recomputed

    # the whole clone moved: the shipped checkpoint's absolute path recorded by the run is not where it is now
    clone = tmp_path / "clone-run"
    assert run("b", "symvit_micro_patch4_32:packaged", clone) == 0
    with sqlite3.connect(clone / "results.sqlite") as con:
        key, info = next((k, i) for k, i in con.execute("SELECT model_key, info_json FROM models")
                         if str(PACKAGED_DIR) in i)
        con.execute("UPDATE models SET info_json = ? WHERE model_key = ?",
                    (info.replace(str(PACKAGED_DIR), "/old/clone/robustbench_rpc/checkpoints"), key))
    units = _stored_units(clone)
    capsys.readouterr()
    assert run("b", "symvit_micro_patch4_32:packaged", clone) == 0, capsys.readouterr().err
    assert "as /old/clone/robustbench_rpc/checkpoints/symvit_micro_patch4_32.safetensors" in capsys.readouterr().out
    assert _stored_units(clone) == units


# ---------------------------------------------------------------------------------------- benchmark()

API_CONTRACT = {"input_size": (3, 32, 32), "num_classes": 10}


class _Flat(torch.nn.Module):
    """A module whose forward a user may edit (or patch) while keeping its weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3 * 32 * 32, 10)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.lin(self.drop(x.flatten(1)))


def _api_suite(tmp_path: Path) -> str:
    return _eval_suite(tmp_path)


def test_api_a_changed_forward_with_the_same_weights_never_gets_the_old_numbers(tmp_path):
    import robustbench_rpc

    net, out = _Flat(), tmp_path / "o"
    first = robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT, out=out,
                                      device="cpu", report=False)
    assert len(first.headline) == 1
    again = robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT, out=out,
                                      device="cpu", report=False)
    assert again.headline.equals(first.headline)  # the same module resumes
    net.forward = lambda x: -net.lin(x.flatten(1))  # same weights, another function
    with pytest.raises(ValueError, match=r"holds results of another model \(module__flat_[0-9a-f]{12}\), not of "
                                         r"module__flat_[0-9a-f]{12} \(this module's weights, code or output"):
        robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT, out=out, device="cpu",
                                  report=False)
    new = robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT,
                                    out=tmp_path / "new", device="cpu", report=False)
    assert new.headline.iloc[0, 0] != first.headline.iloc[0, 0]


def test_api_shows_a_failed_trust_check_and_returns_the_module_in_its_mode(tmp_path):
    import robustbench_rpc
    from robustbench_rpc.api import TrustCheckWarning

    net = _Flat()  # untrained: clean accuracy at chance, the chance_level check FAILs
    net.train()
    net.drop.eval()  # a mixed mode, as given, comes back as given
    with pytest.warns(TrustCheckWarning, match="chance_level"):
        res = robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT,
                                        out=tmp_path / "o", device="cpu", report=False)
    assert res.failed_checks == ["chance_level"]
    assert set(res.checks.columns) == {"check", "status", "message"}
    assert "FAILED trust checks: chance_level" in repr(res)
    assert net.training and not net.drop.training and net.lin.training


@pytest.mark.parametrize("make, match", [
    ("meta", "has tensors on the meta device"),
    ("size", "input size (3, 64, 64) of module__flat_"),
])
def test_api_an_unusable_module_or_contract_is_one_line(tmp_path, make, match):
    import robustbench_rpc

    if make == "meta":
        with torch.device("meta"):
            net, cfg = _Flat(), API_CONTRACT
    else:
        net, cfg = _Flat(), {**API_CONTRACT, "input_size": (3, 64, 64)}
        net.lin = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(32), torch.nn.Flatten(), net.lin)
        net.forward = lambda x: net.lin(x)
    with pytest.raises(ValueError) as info:
        robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=cfg, out=tmp_path / "o",
                                  device="cpu", report=False)
    assert match in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_api_a_float64_module_is_evaluated_as_it_computes(tmp_path):
    import robustbench_rpc
    from robustbench_rpc.data import digits32

    net = _Flat().double().eval()
    res = robustbench_rpc.benchmark(net, suite=_api_suite(tmp_path), data_config=API_CONTRACT, out=tmp_path / "o",
                                    device="cpu", report=False)
    from robustbench_rpc.store.results import ResultsStore

    with ResultsStore(res.out / "results.sqlite", readonly=True) as s:
        rows = s.samples(eval_key=s.evaluations()["eval_key"].iloc[0])
    ds = digits32("test")
    by_id = {int(ds[i][2]): i for i in range(len(ds))}
    x = torch.stack([ds[by_id[int(i)]][0] for i in rows["sample_id"]]).double()
    with torch.no_grad():
        assert list(rows["pred"]) == net(x).argmax(1).tolist()
    assert next(net.parameters()).dtype == torch.float64


def test_train_resumes_a_state_written_before_its_checksum_with_a_note(tmp_path, capsys):
    """A folder trained by the version before the checksum stays resumable, and the resume says it is unchecked."""
    out = tmp_path / "o"
    assert _train(out) == 0
    state = out / "state.pt"
    state.write_bytes(state.read_bytes().split(b"\n", 1)[1])  # the bare torch payload, as that version wrote it
    capsys.readouterr()
    assert _train(out) == 0
    said = capsys.readouterr().out
    assert f"{state} was written by an older version, without a checksum: resumed unchecked" in said, said
    assert "already trained (1/1 epochs)" in said


def test_train_never_saves_inf_or_nan_weights_left_by_a_step_with_a_finite_loss(tmp_path, capsys, monkeypatch):
    """An update can overflow while its loss is finite (here a plug-in objective scaled to 3e38): the epoch's
    weights are checked before they are saved, and the training stops naming the epoch."""
    plugin = tmp_path / "overflowing_objective.py"
    plugin.write_text(
        "import torch.nn.functional as F\n"
        "from robustbench_rpc.training import Objective, register_objective\n\n\n"
        "@register_objective('overflowing-probe')\n"
        "class Overflowing(Objective):\n"
        "    adversarial = False\n\n"
        "    def loss(self, model, bare, x, y, epoch):\n"
        "        logits = model(x)\n"
        "        ce = F.cross_entropy(logits, y)\n"
        "        return ce / ce.detach() * 3e38, logits\n")
    from robustbench_rpc.training.objectives import OBJECTIVES

    monkeypatch.setattr(OBJECTIVES, "_items", dict(OBJECTIVES._items))  # the probe objective leaves with the test
    monkeypatch.setattr(OBJECTIVES, "_origins", dict(OBJECTIVES._origins))
    out = tmp_path / "o"
    assert main(["--plugin", str(plugin), *TINY_TRAIN, "--objective", "overflowing-probe", "--set", "data.limit=16",
                 "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "error: epoch 1: " in err and "of the weights are inf or NaN" in err and "not saved" in err, err
    assert not (out / "last.safetensors").exists() and not (out / "state.pt").exists()


# ------------------------------------------------------------------------------------------------ store

def _finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert main(["run", "--suite", _eval_suite(tmp_path), "--model", "symvit_micro_patch4_32:packaged", "--out",
                 str(out), "--no-report", "--no-progress"]) == 0
    return out


def _edit_store(out: Path, sql: str) -> None:
    import sqlite3

    con = sqlite3.connect(out / "results.sqlite")
    con.execute("PRAGMA ignore_check_constraints = ON")  # as a user's sqlite3 shell may
    with con:
        con.execute(sql)
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # damage SQLite's own check does not see
    con.close()


def _run_again(out: Path, tmp_path: Path) -> int:
    return main(["run", "--suite", _eval_suite(tmp_path), "--model", "symvit_micro_patch4_32:packaged", "--out",
                 str(out), "--no-report", "--no-progress"])


@pytest.mark.parametrize("sql, found", [
    ("UPDATE samples SET confidence = 7.5 WHERE sample_id = (SELECT MIN(sample_id) FROM samples)",
     "1 sample row(s) with confidence outside [0, 1], e.g. "),
    ("UPDATE samples SET correct1 = 3 WHERE sample_id = (SELECT MIN(sample_id) FROM samples)",
     "1 sample row(s) with correct1 not 0/1, e.g. "),
    ("UPDATE samples SET correct1 = 1, correct5 = 0 WHERE sample_id = (SELECT MIN(sample_id) FROM samples)",
     "1 sample row(s) with top-1 correct but not top-5"),
])
def test_store_an_impossible_sample_value_is_refused_by_report_and_by_a_resume(tmp_path, capsys, sql, found):
    out = _finished_run(tmp_path)
    _edit_store(out, sql)
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = _err_line(capsys)
    assert f"the results store {out / 'results.sqlite'} is damaged ({found}" in err, err
    assert _run_again(out, tmp_path) == 1  # SQLite's quick_check sees a broken CHECK constraint here, or we do
    assert "is damaged (" in _err_line(capsys)
    from robustbench_rpc.store.results import ResultsStore

    with ResultsStore(out / "results.sqlite", readonly=True, check_rows=False) as store:
        assert any(found in p for p in store.verify())  # the check verify runs, the same words


@pytest.mark.parametrize("sql, found", [
    ("DELETE FROM samples WHERE sample_id = (SELECT MIN(sample_id) FROM samples)", "records n=8 but holds 7"),
    ("UPDATE units SET n = 9 WHERE unit = 0", "records n=9 but holds 8"),
])
def test_store_a_unit_whose_rows_disagree_is_refused_by_report_and_recomputed_by_a_resume_that_says_so(
        tmp_path, capsys, sql, found):
    out = _finished_run(tmp_path)
    import sqlite3

    with sqlite3.connect(out / "results.sqlite") as con:
        before = con.execute("SELECT * FROM samples ORDER BY eval_key, sample_id").fetchall()
    _edit_store(out, sql)
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = _err_line(capsys)
    assert found in err and "rerun the same `robustbench-rpc run` into" in err, err
    assert _run_again(out, tmp_path) == 0
    note = [ln for ln in capsys.readouterr().out.splitlines() if "disagree with their units row" in ln]
    assert len(note) == 1 and found in note[0] and "they are recomputed" in note[0], note
    with sqlite3.connect(out / "results.sqlite") as con:
        assert con.execute("SELECT * FROM samples ORDER BY eval_key, sample_id").fetchall() == before
    assert main(["report", str(out)]) == 0


def test_train_an_output_folder_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    from robustbench_rpc.training import loop

    def read_only(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(loop, "lock_folder", read_only)  # where train takes its folder lock
    assert _train(tmp_path / "o") == 2
    assert f"--out {tmp_path / 'o'}: cannot write there (Read-only file system)" in _one_line_error(capsys)


def test_api_a_module_returning_probabilities_is_refused_before_compute(tmp_path):
    import robustbench_rpc
    from robustbench_rpc.attacks import ModelOutputError

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10), torch.nn.Softmax(dim=1))
    with pytest.raises(ModelOutputError) as info:
        robustbench_rpc.benchmark(net, suite=_eval_suite(tmp_path, OOD), data_config=API_CONTRACT,
                                  out=tmp_path / "o", device="cpu", report=False)
    assert "returns probabilities, not logits" in str(info.value) and "\n" not in str(info.value)
    assert _stored_units(tmp_path / "o") == 0


def test_cli_a_reader_that_leaves_early_gets_no_traceback():
    """`robustbench-rpc models | head -1`: the pipe closes under the listing; the command ends quietly, exit 0."""
    exe = Path(sys.executable).parent / "robustbench-rpc"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustbench_rpc"]
    proc = subprocess.Popen(cmd + ["models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
