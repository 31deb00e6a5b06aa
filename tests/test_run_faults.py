"""Faults on the run path (planning, resume, preflight, exit codes), each replayed through the CLI."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robustbench_rpc.cli.commands import main
from tiny_runs import slow_plugin, suite_text

MODEL = "symvit_micro_patch4_32:packaged"
SUITE = suite_text(dict(kind="clean"), name="faults", models=None, batch_size=8, limit=16)
FGSM = """
[[evaluation]]
kind = "attack"
attack = "fgsm"
eps = "2/255"
"""


def _suite(tmp_path, text=SUITE, name="s.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _run(*args) -> int:
    return main(["run", *args, "--no-report", "--no-progress"])


def _plugin(tmp_path, body: str) -> str:
    p = tmp_path / f"plug_{abs(hash(str(tmp_path))) % 10 ** 9}.py"  # one module name per plug-in file
    p.write_text("import torch\nfrom torch import nn\nimport robustbench_rpc\n" + textwrap.dedent(body))
    return str(p)


def _units(out: Path) -> int:
    with sqlite3.connect(out / "results.sqlite") as con:
        return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- resume never mixes two runs ----------------------------------------------------------------------------

def _folder_tree(root: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_resume_with_other_images_under_the_same_dataset_is_refused(tmp_path, capsys):
    one, two = _folder_tree(tmp_path / "one", 0), _folder_tree(tmp_path / "two", 1)
    suite = _suite(tmp_path, SUITE.replace('dataset = "digits32"', 'dataset = "folder"') + FGSM)
    common = ["--suite", suite, "--model", "plain_cnn", "--out", str(tmp_path / "run")]
    plugin = _plugin(tmp_path, """
        @robustbench_rpc.register_model("plain_cnn", input_size=32, mean=0.5, std=0.25, num_classes=2)
        def plain_cnn(**kw):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        """)
    assert main(["--plugin", plugin, "run", *common, "--data-root", f"folder={one}", "--no-report"]) == 0
    capsys.readouterr()  # the plug-in stays registered in this process: later calls need no --plugin
    assert main(["run", *common, "--data-root", f"folder={two}", "--no-report"]) == 2
    err = _one_line_error(capsys)
    assert "dataset folder: root" in err and str(two.resolve()) in err
    shutil.rmtree(two)
    shutil.copytree(_folder_tree(tmp_path / "three", 2), two)  # same root later, other images: also refused
    assert main(["run", *common, "--data-root", f"folder={one}", "--no-report"]) == 0
    capsys.readouterr()
    from PIL import Image

    for f in (one / "a").iterdir():  # replaced in place, same names: flat images, other file sizes
        Image.new("RGB", (32, 32), (40, 80, 120)).save(f)
    assert main(["run", *common, "--data-root", f"folder={one}", "--no-report"]) == 2
    assert "other images under the same root" in _one_line_error(capsys)


def test_resume_with_other_eot_samples_is_refused(tmp_path, capsys):
    common = ["--suite", _suite(tmp_path), "--model", MODEL, "--out", str(tmp_path / "run")]
    assert _run(*common) == 0
    capsys.readouterr()
    assert _run(*common, "--eot-samples", "3") == 2
    assert "eot_samples=8 (now 3)" in _one_line_error(capsys)


def test_same_model_twice_is_refused_before_compute(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("--suite", _suite(tmp_path), "--model", MODEL, "--model", MODEL, "--out", str(out)) == 2
    assert "listed twice" in _one_line_error(capsys)
    assert not (out / "results.sqlite").exists()


def test_existing_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    assert _run("--suite", _suite(tmp_path), "--model", MODEL, "--out", str(out)) == 2
    assert "not a run folder" in _one_line_error(capsys)
    assert (out / "report.md").read_text() == "my notes"


def test_store_file_alone_holds_every_unit_after_a_run(tmp_path):
    out = tmp_path / "run"
    assert _run("--suite", _suite(tmp_path, SUITE + FGSM), "--model", MODEL, "--out", str(out)) == 0
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(out / "results.sqlite", alone / "results.sqlite")  # as people copy it: without -wal / -shm
    assert _units(alone) == _units(out) == 4


# -- models that return the wrong thing ---------------------------------------------------------------------

@pytest.mark.parametrize("returns,match", [
    ("(logits, logits)", "returned a tuple of 2 items"),
    ("{'logits': logits}", "returned a dict with keys logits"),
    ("logits.argmax(1)", "returned a torch.int64 tensor"),
])
def test_model_returning_something_else_than_logits_is_one_line(tmp_path, capsys, returns, match):
    name = f"odd_model_{abs(hash(returns)) % 10**6}"
    plugin = _plugin(tmp_path, f"""
        class Odd(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3 * 32 * 32, 10)
            def forward(self, x):
                logits = self.lin(x.flatten(1))
                return {returns}

        @robustbench_rpc.register_model("{name}", input_size=32, mean=0.5, std=0.25, num_classes=10)
        def odd_model(**kw):
            return Odd()
        """)
    assert main(["--plugin", plugin, "run", "--suite", _suite(tmp_path), "--model", name, "--out",
                 str(tmp_path / "run"), "--no-report"]) == 1
    err = _one_line_error(capsys)
    assert "odd_model" in err and match in err


def test_output_width_that_differs_from_the_declared_classes_is_refused(tmp_path, capsys):
    plugin = _plugin(tmp_path, """
        @robustbench_rpc.register_model("wide_model", input_size=32, mean=0.5, std=0.25, num_classes=10)
        def wide_model(**kw):
            m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1000))
            m.num_classes = 10
            return m
        """)
    out = tmp_path / "run"
    assert main(["--plugin", plugin, "run", "--suite", _suite(tmp_path), "--model", "wide_model", "--out", str(out),
                 "--no-report"]) == 1
    assert "returns 1000 logits per image but declares 10 classes" in _one_line_error(capsys)
    assert _units(out) == 0


def test_nan_input_gradients_are_named_before_any_attack(tmp_path, capsys):
    plugin = _plugin(tmp_path, """
        class NanGrad(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3 * 32 * 32, 10)
            def forward(self, x):
                x = x - x.detach() + torch.sqrt(x * 0)  # value x, gradient NaN (d sqrt at 0)
                return self.lin(x.flatten(1))

        @robustbench_rpc.register_model("nangrad_model", input_size=32, mean=0.5, std=0.25, num_classes=10)
        def nangrad_model(**kw):
            return NanGrad()
        """)
    out = tmp_path / "run"
    assert main(["--plugin", plugin, "run", "--suite", _suite(tmp_path, SUITE + FGSM), "--model", "nangrad_model",
                 "--out", str(out), "--no-report"]) == 1
    err = _one_line_error(capsys)
    assert "nangrad_model" in err and "input gradient" in err and "NaN" in err


@pytest.mark.parametrize("name,body,match", [
    ("overshoot", "return (x + 2 * self.eps).clamp(0, 1)", "exceeds eps"),  # twice its budget
    ("nan-attack", "return x * float('nan')", "NaN"),
])
def test_attack_plugin_that_breaks_its_threat_model_is_one_line_and_keeps_finished_units(tmp_path, capsys, name,
                                                                                         body, match):
    plugin = _plugin(tmp_path, f"""
        from robustbench_rpc.attacks import register_attack

        @register_attack("{name}", overwrite=True)
        class Broken:  # a plain callable plug-in: nothing projects its output back into the budget
            gradient_based = False
            def __init__(self, eps=None, norm="Linf", seed=None):
                self.eps, self.norm, self.space, self.clip = eps, norm, "pixel", True
                self.params = {{"eps": eps, "norm": norm}}
            def __call__(self, model, x, y):
                {body}
        """)
    suite = _suite(tmp_path, SUITE + f'[[evaluation]]\nkind = "attack"\nattack = "{name}"\neps = "2/255"\n')
    out = tmp_path / "run"
    assert main(["--plugin", plugin, "run", "--suite", suite, "--model", MODEL, "--out", str(out),
                 "--no-report"]) == 1
    err = _one_line_error(capsys)
    assert name in err and match in err and "unit 0" in err and "units finished before are kept" in err
    assert _units(out) == 2  # the clean evaluation's units


# -- suite values of the wrong type -------------------------------------------------------------------------

@pytest.mark.parametrize("lines,match", [
    ('attack = "pgd"\neps = "2/255"\nrandom_start = "false"', "random_start must be true or false"),
    ('attack = "pgd"\neps = "2/255"\nearly_stop = "false"', "early_stop must be true or false"),
    ('attack = "pgd"\neps = "2/255"\nsteps = 2.5', "steps must be a whole number"),
    ('attack = "pgd"\neps = [true]', "eps True is not a number"),
])
def test_attack_values_of_the_wrong_type_are_refused(tmp_path, capsys, lines, match):
    suite = _suite(tmp_path, SUITE + f'[[evaluation]]\nkind = "attack"\n{lines}\n')
    assert _run("--suite", suite, "--model", MODEL, "--out", str(tmp_path / "run")) == 2
    err = _one_line_error(capsys)
    assert match in err and "s.toml" in err


@pytest.mark.parametrize("defaults,evaluation,match", [
    ('models = ["symvit_micro_patch4_32:packaged", 5]', "", "models must be a list of names"),
    ('models = "symvit_micro_patch4_32:packaged"', "", "models must be a list of names"),
    ("", '[[evaluation]]\nkind = "corruption"\ncorruptions = "fog"\nseverities = 3', "severities must be a list"),
])
def test_suite_values_of_the_wrong_type_are_refused(tmp_path, capsys, defaults, evaluation, match):
    suite = _suite(tmp_path, SUITE.replace("[defaults]\n", f"[defaults]\n{defaults}\n") + evaluation + "\n")
    model = [] if "models" in defaults else ["--model", MODEL]
    assert _run("--suite", suite, *model, "--out", str(tmp_path / "run")) == 2
    assert match in _one_line_error(capsys)


# -- scripts can act on the verdict; interrupts are one line ------------------------------------------------

def test_strict_exits_3_when_a_trust_check_fails(tmp_path, capsys):
    plugin = _plugin(tmp_path, """
        @robustbench_rpc.register_model("chance_model", input_size=32, mean=0.5, std=0.25, num_classes=10)
        def chance_model(**kw):
            m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
            nn.init.zeros_(m[1].weight)
            return m
        """)
    args = ["run", "--suite", _suite(tmp_path), "--model", "chance_model", "--no-report"]
    assert main(["--plugin", plugin] + args + ["--out", str(tmp_path / "a")]) == 0  # default: reported, exit 0
    assert main(args + ["--out", str(tmp_path / "b"), "--strict"]) == 3
    assert "--strict: 1 trust check(s) failed (chance_level)" in capsys.readouterr().err


def test_strict_exits_0_when_every_check_passes(tmp_path):
    assert _run("--suite", _suite(tmp_path), "--model", MODEL, "--out", str(tmp_path / "run"), "--strict") == 0


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupt_is_one_line_and_keeps_finished_units(tmp_path, sig, code, word):
    plugin = _plugin(tmp_path, slow_plugin("slow_model", "1.0"))  # each unit then takes 1 s
    suite = _suite(tmp_path, SUITE.replace("limit = 16", "limit = 400"))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal delivers it: a test suite started in the background by a non-interactive shell
    # (`cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "robustbench_rpc", "--plugin", plugin, "run", "--suite", suite,
                             "--model", "slow_model", "--out", str(out), "--no-report", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=restore_sigint)
    start = time.time()
    while time.time() < start + 120 and not ((out / "results.sqlite").exists() and _units_or_zero(out) >= 2):
        time.sleep(0.2)
    # 50 units of 1 s: a run that ended already was never interrupted (say so, rather than a bare exit-code diff)
    assert proc.poll() is None, (f"the run ended (exit {proc.returncode}) {time.time() - start:.1f} s after its "
                                 f"start, before 2 stored units were seen ({_units_or_zero(out)} now)")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, err
    assert _units(out) >= 2


def _units_or_zero(out: Path) -> int:
    try:
        return _units(out)
    except sqlite3.Error:
        return 0


def test_checkpoint_of_another_model_is_refused_unless_overridden(tmp_path, capsys):
    """An RPC checkpoint given to symvit_micro_patch4_32 (same shapes) loaded silently at 40.6 %."""
    args = ["--suite", _suite(tmp_path), "--model", "symvit_micro_patch4_32:" + str(
        Path(__file__).resolve().parents[1] / "robustbench_rpc/checkpoints/rpc_symvit_micro_patch4_32.safetensors")]
    assert _run(*args, "--out", str(tmp_path / "a")) == 2
    err = _one_line_error(capsys)
    assert "holds model rpc_symvit_micro_patch4_32" in err and "--override-checkpoint-args" in err
    assert _run(*args, "--out", str(tmp_path / "b"), "--override-checkpoint-args") == 0
