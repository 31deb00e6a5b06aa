"""benchmarks/gpu_check.sh without a GPU: it refuses in one line and measures nothing; every command it would
run exists with the flags it passes (each benchmark's own argparse, the CLI's parser, pytest's file)."""
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_without_cuda_it_says_nothing_was_measured_and_writes_nothing(tmp_path):
    r = _run("--out", str(tmp_path / "o"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 3
    assert "no CUDA device: nothing measured" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_option_is_one_line():
    r = _run("--fast")
    assert r.returncode == 2 and r.stderr.strip() == "gpu_check.sh: unknown option --fast (use --out DIR, --dry-run)"


class _Parsed(Exception):
    pass


def _bench_parses(path: Path, argv: list[str], monkeypatch) -> object:
    """Run the benchmark's main(argv) up to its argument parsing (C.setup is where each starts work)."""
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(path.parent))
    spec.loader.exec_module(mod)

    def stop(args):
        raise _Parsed(args)

    monkeypatch.setattr(mod.C, "setup", stop)
    with pytest.raises(_Parsed) as got:
        mod.main(argv)
    return got.value.args[0]


def test_every_command_it_runs_exists_with_its_flags(tmp_path, monkeypatch):
    from robustbench_rpc.cli.commands import build_parser

    r = _run("--dry-run", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    commands = [shlex.split(line) for line in r.stdout.splitlines()]
    assert len(commands) == 10
    seen = set()
    for cmd in commands:
        if "torch.distributed.run" in cmd or Path(cmd[0]).name == "torchrun":
            i = cmd.index("-m", 1 if Path(cmd[0]).name == "torchrun" else cmd.index("torch.distributed.run") + 1)
            assert "--nproc_per_node" in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "2"
            cmd = [sys.executable] + cmd[i:]
            seen.add("torchrun")
            assert importlib.util.find_spec("torch.distributed.run") is not None
        if cmd[1:3] == ["-m", "pytest"]:
            assert all((ROOT / a).is_file() for a in cmd[3:] if a.startswith("tests/"))
            seen.add("pytest")
        elif cmd[1:3] == ["-m", "robustbench_rpc"]:
            args = build_parser().parse_args(cmd[3:])  # argparse exits (SystemExit) on an unknown flag
            assert args.device == "cuda" and args.suite == "quick"
            seen.add(f"run {args.amp}")
        else:
            script = ROOT / cmd[1]
            assert script.is_file(), cmd[1]
            args = _bench_parses(script, cmd[2:], monkeypatch)
            assert args.device == "cuda"
            seen.add(script.stem + (f" {args.dtype}" if hasattr(args, "dtype") else ""))
    assert seen == {"pytest", "torchrun", "run fp32", "run fp16", "bench_pgd", "bench_robust_accuracy",
                    "bench_autoattack", "bench_rpc_attention float32", "bench_rpc_attention bfloat16",
                    "bench_rpc_attention float16"}


def test_report_states_goals_from_the_steps_outputs(tmp_path):
    """The results file from outputs in the layout the steps write (here: hand-made), goals judged."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check_report as R

    (tmp_path / "json").mkdir()
    row = {"bench": "robust_accuracy", "metric": "PGD-10 robust-acc images/s ours/torchattacks "
           "[symvit_tiny_patch16_224]", "value": "2.50", "goal": ">= 2", "note": "n"}
    (tmp_path / "json" / "robust_accuracy.json").write_text(
        '{"machine": {"cpu": "x", "cores": 1, "torch": "t", "torch_threads": 1, "python": "p", "device": "cuda",'
        ' "load_avg_1min": 0, "gpu": "G", "cuda": "12"}, "summary": [%s], "details": "D"}'
        % __import__("json").dumps(row))
    head = "model_key,eval_key,kind,name,top1\n"
    for run, acc in (("quick_fp32", "0.500"), ("quick_fp16", "0.515")):
        d = tmp_path / "runs" / run / "results"
        d.mkdir(parents=True)
        (d / "aggregates.csv").write_text(head + f"m,e1,attack,PGD-10,{acc}\nm,e0,clean,clean,0.9\n")
    (tmp_path / "status.tsv").write_text("pgd\tok\t12\trc 0\ntorchrun_nccl\tskipped\t0\tonly 1 GPU\n")
    text = R.build(tmp_path, 100)
    assert "| PGD-10 ViT-tiny 224 px, robust-accuracy path / torchattacks images/s | 2.50 | >= 2 | met |" in text
    assert "1.50 pp over 1 evaluations | <= 1 pp | NOT met" in text
    assert "torchrun_nccl | skipped" in text
    assert ("GPU: **" + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")) in text
