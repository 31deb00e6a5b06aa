"""Input that is half right: plug-ins that do not import, subset files that list an
image twice, checkpoints that inflate, unreadable and 16-bit images, and a resume that adds
--skip-unreadable. Each fault gets one line naming the thing, and loses nothing."""
from __future__ import annotations

import inspect
import re
import textwrap

import pytest

from robustbench_rpc.cli.commands import main
from robustbench_rpc.registry import DuplicateNameError, Registry


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _plugin(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


# ------------------------------------------------------------------------------------------ plug-ins

def test_plugin_with_a_syntax_error_names_file_and_line(tmp_path, capsys):
    path = _plugin(tmp_path, "faults_syntax", """\
        import torch

        def broken(:
            pass
        """)
    assert main(["--plugin", str(path), "models"]) == 2
    err = _one_error_line(capsys)
    assert f"syntax error at {path}:3" in err


def test_plugin_raising_at_import_names_its_line_and_the_exception(tmp_path, capsys):
    path = _plugin(tmp_path, "faults_raises", """\
        import json


        def settings():
            return json.loads("{not json")


        SETTINGS = settings()
        """)
    assert main(["--plugin", str(path), "models"]) == 2
    err = _one_error_line(capsys)
    # the innermost line of the plug-in file (inside json the error is raised deeper), and the text
    assert f"(at {path}:5)" in err and "JSONDecodeError: Expecting property name" in err
    import sys

    assert "faults_raises" not in sys.modules  # a failed import leaves nothing half-loaded behind

    path2 = _plugin(tmp_path, "faults_raises_top", "x = 1\nraise RuntimeError('no GPU here\\nat all')\n")
    assert main(["--plugin", str(path2), "models"]) == 2
    err = _one_error_line(capsys)
    assert f"RuntimeError: no GPU here at all (at {path2}:2)" in err


def test_plugin_registering_an_existing_name_names_both_registrants(tmp_path, capsys):
    import robustbench_rpc.attacks.pgd as pgd_module

    path = _plugin(tmp_path, "faults_dup_attack", """\
        from robustbench_rpc.attacks import register_attack


        @register_attack("pgd")
        def my_pgd(**kwargs):
            raise NotImplementedError
        """)
    assert main(["--plugin", str(path), "models"]) == 2
    err = _one_error_line(capsys)
    first_line = next(i for i, ln in enumerate(inspect.getsource(pgd_module).splitlines(), 1)
                      if ln.startswith('@register_attack("pgd")'))
    assert f"attack 'pgd' is already registered by robustbench_rpc.attacks.pgd ({pgd_module.__file__}:" \
           f"{first_line})" in err
    assert f"faults_dup_attack ({path}:4) registers it again" in err
    from robustbench_rpc.attacks import get_attack

    assert type(get_attack("pgd", eps=0.01)).__module__ == "robustbench_rpc.attacks.pgd"  # the original kept

    path2 = _plugin(tmp_path, "faults_dup_attention", """\
        from robustbench_rpc.attention import SymmetricAttention, register_attention
        register_attention("rpc")(SymmetricAttention)
        """)
    assert main(["--plugin", str(path2), "models"]) == 2
    err = _one_error_line(capsys)
    assert re.search(r"attention variant 'rpc' is already registered by robustbench_rpc\.attention\.\w+ \(", err)
    assert f"({path2}:2) registers it again" in err
    from robustbench_rpc.attention import SymmetricAttention

    assert SymmetricAttention.variant_name == "symmetric"  # a refused registration leaves the class as it was


def test_plugin_module_not_found_and_the_same_file_twice(tmp_path, capsys, monkeypatch):
    assert main(["--plugin", "faults_no_such_module", "models"]) == 2
    assert "no module named 'faults_no_such_module'" in _one_error_line(capsys)
    from robustbench_rpc.attacks import ATTACKS
    from robustbench_rpc.plugins import PluginError, load_plugin

    path = _plugin(tmp_path, "faults_twice", """\
        from robustbench_rpc.attacks import register_attack


        @register_attack("faults-twice")
        def make(**kwargs):
            raise NotImplementedError
        """)
    try:
        load_plugin(str(path))
        load_plugin(str(path))  # imported once, as `import` would: no clash with itself
        assert ATTACKS.registered_by("faults-twice") == f"faults_twice ({path}:4)"
        other = tmp_path / "elsewhere"
        other.mkdir()
        (other / "faults_twice.py").write_text("")
        with pytest.raises(PluginError, match="a module named 'faults_twice' is already loaded"):
            load_plugin(str(other / "faults_twice.py"))
    finally:
        ATTACKS._items.pop("faults-twice", None)
        import sys

        sys.modules.pop("faults_twice", None)


def test_registry_records_registrants_and_overwrite_still_replaces():
    reg: Registry[object] = Registry("thing")
    first, second = object(), object()
    reg.add("a", first); line_first = inspect.currentframe().f_lineno  # noqa: E702
    with pytest.raises(DuplicateNameError) as e:
        reg.add("a", second)
    here = __file__
    assert e.value.first == f"{__name__} ({here}:{line_first})"
    assert e.value.second == f"{__name__} ({here}:{line_first + 2})"
    assert isinstance(e.value, ValueError) and reg.get("a") is first
    reg.add("a", first)  # the same object again is no clash
    reg.add("a", second, overwrite=True); line_over = inspect.currentframe().f_lineno  # noqa: E702
    assert reg.get("a") is second and reg.registered_by("a") == f"{__name__} ({here}:{line_over})"


# ------------------------------------------------------------------------------------------ folders

CLEAN_SUITE = 'name = "input-faults"\n[defaults]\nbatch_size = 4\n[[evaluation]]\nkind = "clean"\n'


def _image_folder(root, classes: int = 10, per_class: int = 2, ext: str = "png"):
    """``root/c<k>/img<j>.<ext>``: small RGB images, a dataset ``folder`` for the 10-class micro models."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"c{k}" / f"img{j}.{ext}")
    return root


def _run_folder(tmp_path, root, out, *extra):
    suite = tmp_path / "input-faults.toml"
    suite.write_text(CLEAN_SUITE)
    return main(["run", "--suite", str(suite), "--model", "symvit_micro_patch4_32:packaged", "--dataset", "folder",
                 "--data-root", f"folder={root}", "--out", str(out), "--no-progress", "--no-report",
                 "--device", "cpu", *extra])


# ------------------------------------------------------------------------------------------ subset files

def test_subset_file_listing_an_image_twice_is_refused(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    subset = tmp_path / "subset.txt"
    subset.write_text("# four entries, three images\n3\nc1/img0.png\n\n007\n3  # again\n")
    assert _run_folder(tmp_path, root, tmp_path / "o", "--subset", str(subset)) == 2
    err = _one_error_line(capsys)
    assert f"--subset {subset}: '3' is listed twice (lines 2 and 6)" in err
    assert not (tmp_path / "o").exists()  # refused while planning: nothing written

    subset.write_text("c0/img1.png\n./c0/img1.png\n")  # one path, two spellings
    assert _run_folder(tmp_path, root, tmp_path / "o", "--subset", str(subset)) == 2
    assert "'./c0/img1.png' is listed twice (lines 1 and 2)" in _one_error_line(capsys)

    subset.write_text("5\nc3/img0.png\nc2/img1.png\n")  # an id and a path naming the same image
    assert _run_folder(tmp_path, root, tmp_path / "o", "--subset", str(subset)) == 2
    err = _one_error_line(capsys)
    assert "'5' and 'c2/img1.png' (lines 1 and 3) are the same image (sample id 5)" in err


# ------------------------------------------------------------------------------------------ checkpoints

def _rezip(src, dst, deflate_member: str | None = None, inflated_zeros: int = 0, compress_all: bool = False):
    """Rewrite a torch.save zip: the member ending in ``deflate_member`` becomes ``inflated_zeros`` zero bytes,
    deflated (~1000x), or with ``compress_all`` every member is deflated as it is (an honest re-zip)."""
    import zipfile

    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            if deflate_member and info.filename.endswith(deflate_member):
                zi = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with b.open(zi, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 20)
                    for _ in range(inflated_zeros >> 20):
                        f.write(chunk)
            else:
                b.writestr(info, a.read(info.filename),
                           compress_type=zipfile.ZIP_DEFLATED if compress_all else zipfile.ZIP_STORED)


def test_a_checkpoint_member_that_inflates_1000x_is_refused_before_torch_reads_it(tmp_path, capsys, monkeypatch):
    import time
    import zipfile

    import torch

    from robustbench_rpc.models import CheckpointError, create_model, read_checkpoint_file

    torch.save(create_model("symvit_micro_patch4_32").state_dict(), tmp_path / "real.pth")
    bomb = tmp_path / "bomb.pth"
    _rezip(tmp_path / "real.pth", bomb, deflate_member="/data/0", inflated_zeros=96 << 20)
    member = next(m for m in zipfile.ZipFile(bomb).infolist() if m.filename.endswith("/data/0"))
    assert member.file_size == 96 << 20 and member.file_size > 1000 * member.compress_size  # a 1000x member

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was reached: the member would have been inflated in memory")

    monkeypatch.setattr(torch, "load", no_torch_load)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        read_checkpoint_file(bomb)
    assert time.perf_counter() - t0 < 0.5  # the central directory only; nothing inflated
    assert f"{bomb}: compressed member {member.filename} inflates" in str(e.value) and "96.0 MiB" in str(e.value)
    with pytest.raises(CheckpointError, match="zip bomb"):
        read_checkpoint_file(bomb, mmap=True)

    # the user's path: one line naming the file, the member and its sizes; nothing run
    assert main(["run", "--model", f"symvit_micro_patch4_32:{bomb}", "--out", str(tmp_path / "o"),
                 "--no-progress", "--no-report", "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert str(bomb) in err and member.filename in err and "-> 96.0 MiB" in err


def test_real_torch_save_files_load_and_rezips_within_the_bound(tmp_path):
    import torch

    from robustbench_rpc.models import create_model, read_checkpoint_file

    model = create_model("symvit_micro_patch4_32")
    # the paper's layout, with a large zero buffer: stored by torch.save, so never refused whatever its size
    torch.save({"model": model.state_dict(), "zeros": torch.zeros(20 << 20)}, tmp_path / "paper.pth")
    obj = read_checkpoint_file(tmp_path / "paper.pth")
    assert obj["zeros"].numel() == 20 << 20
    _rezip(tmp_path / "paper.pth", tmp_path / "rezipped.pth", compress_all=True)  # zeros 80 MiB -> 80 KB: refused
    from robustbench_rpc.models import CheckpointError

    with pytest.raises(CheckpointError, match="zip bomb"):
        read_checkpoint_file(tmp_path / "rezipped.pth")
    torch.save(model.state_dict(), tmp_path / "weights.pth")  # random weights deflate ~1.1x: read as before
    _rezip(tmp_path / "weights.pth", tmp_path / "weights_deflated.pth", compress_all=True)
    sd = read_checkpoint_file(tmp_path / "weights_deflated.pth")
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ 16-bit images

def _sixteen_bit_folder(root):
    """c0/gray16.png (PIL mode I;16, mean 0.27) and c1/rgb48.png (48-bit, channel means 0.27/0.135/0.09)."""
    import cv2
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0.0, 0.54, 32 * 32).reshape(32, 32)  # mean 0.27
    gray = np.rint(ramp * 65535).astype(np.uint16)
    (root / "c0").mkdir(parents=True)
    (root / "c1").mkdir()
    Image.fromarray(gray).save(root / "c0" / "gray16.png")
    rgb = np.stack([gray, gray // 2, gray // 3], axis=-1)
    assert cv2.imwrite(str(root / "c1" / "rgb48.png"), rgb[..., ::-1])  # OpenCV writes BGR
    return gray.astype(np.float64) / 65535, rgb.astype(np.float64) / 65535


def test_sixteen_bit_pngs_decode_as_value_over_65535(tmp_path):
    import numpy as np
    from PIL import Image

    from robustbench_rpc.data.folders import ClassFolder, load_rgb

    gray, rgb = _sixteen_bit_folder(tmp_path / "imgs")
    assert Image.open(tmp_path / "imgs" / "c0" / "gray16.png").mode == "I;16"
    assert Image.open(tmp_path / "imgs" / "c1" / "rgb48.png").mode == "RGB"  # PIL: 8 bits kept of 16
    ds = ClassFolder(str(tmp_path / "imgs"), resize=None, crop=None)
    x_gray, x_rgb = ds[0][0], ds[1][0]
    assert x_gray.shape == x_rgb.shape == (3, 32, 32)
    assert abs(float(x_gray.mean()) - gray.mean()) < 1e-6 and abs(gray.mean() - 0.27) < 1e-3  # was 0.996
    np.testing.assert_allclose(x_gray[1].numpy(), gray, atol=1e-6)
    np.testing.assert_allclose(x_rgb.numpy().transpose(1, 2, 0), rgb, atol=1e-6)  # not only the high byte
    # the 8-bit path (corruptions, training, custom transforms): rounded, not clipped
    np.testing.assert_array_equal(ds.uint8_item(0)[0], np.rint(np.repeat(gray[..., None], 3, 2) * 255))
    assert abs(np.asarray(load_rgb(ds.samples[1][0]), dtype=np.float64).mean() / 255 - rgb.mean()) < 1 / 510
    # the model's preprocessing (resize + crop) on 16-bit planes keeps the mean
    small = ClassFolder(str(tmp_path / "imgs"), resize=16, crop=12)
    assert small[0][0].shape == (3, 12, 12) and abs(float(small[0][0].mean()) - 0.27) < 0.02


def test_float_pixels_are_refused_in_one_line(tmp_path):
    import numpy as np
    from PIL import Image

    from robustbench_rpc.data.folders import UnreadableImageError, load_rgb

    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 3.5, dtype=np.float32)).save(path)
    with pytest.raises(UnreadableImageError) as e:
        load_rgb(str(path))
    assert str(path) in str(e.value) and "no known range" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ unreadable images

def _break_png_stream(path):
    """Damage the compressed pixels of a PNG, keeping its header and IEND: the quick scan passes it,
    decoding fails (a file that breaks mid-run)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start:start + 40] = b"\xab" * 40
    path.write_bytes(bytes(data))


def _samples(out):
    from robustbench_rpc.store.results import ResultsStore

    with ResultsStore(out / "results.sqlite", readonly=True) as store:
        evals = store.evaluations()
        key = evals["eval_key"][0]
        info = store.evaluation_info(key)
        samples = store.samples(store.models()["model_key"][0], key)
    return info, samples.sort_values("sample_id").reset_index(drop=True)


def test_unreadable_files_are_found_before_compute_and_the_flag_is_named(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    (root / "c3" / "img0.png").write_bytes(b"not a png at all")
    truncated = root / "c5" / "img1.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    assert _run_folder(tmp_path, root, tmp_path / "o") == 2
    err = _one_error_line(capsys)
    assert "dataset 'folder': 2 of the 20 image files the run reads cannot be decoded" in err
    assert str(root / "c3" / "img0.png") in err and str(truncated) in err and "--skip-unreadable" in err
    assert not (tmp_path / "o").exists()  # before any compute: nothing written

    assert _run_folder(tmp_path, root, tmp_path / "o", "--skip-unreadable") == 0
    info, samples = _samples(tmp_path / "o")
    assert info["params"]["skipped_unreadable"] == 2 and info["n_samples"] == 18 and len(samples) == 18
    assert info["skipped_sample_ids"] == [6, 11] and not {6, 11} & set(samples["sample_id"])


def test_a_resume_may_add_skip_unreadable_after_a_file_broke_mid_run(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    broken = root / "c6" / "img1.png"  # sample id 13: unit 3 of 5 (batch size 4)
    _break_png_stream(broken)
    out = tmp_path / "o"
    assert _run_folder(tmp_path, root, out, "--workers", "1") == 2
    err = _one_error_line(capsys)  # also when a data worker hit it
    assert f"unreadable image {broken}: OSError: broken data stream" in err and "--skip-unreadable" in err
    before_info, before = _samples(out)
    assert list(before["sample_id"]) == list(range(12))  # units 0-2 finished

    assert _run_folder(tmp_path, root, out, "--skip-unreadable") == 0  # was: "already registered with different info"
    info, after = _samples(out)
    assert info["params"]["skipped_unreadable"] == 1 and info["n_samples"] == 19 == len(after)
    assert info["skipped_sample_ids"] == [13] and 13 not in set(after["sample_id"])
    import pandas as pd

    pd.testing.assert_frame_equal(after.iloc[:12].drop(columns=["unit"], errors="ignore"),
                                  before.drop(columns=["unit"], errors="ignore"))  # the finished units, unmoved
    assert {k: v for k, v in info.items() if k not in ("n_samples", "skipped_sample_ids", "params")} == \
        {k: v for k, v in before_info.items() if k not in ("n_samples", "params")}


def test_the_store_refuses_a_skip_that_would_move_finished_units(tmp_path):
    from robustbench_rpc.store.results import ResultsStore
    from robustbench_rpc.store.errors import StoreConflictError

    info = {"kind": "clean", "name": "clean", "dataset": "folder", "params": {}, "n_samples": 8}
    rows = lambda ids: {"sample_id": ids, "label": [0] * len(ids), "pred": [0] * len(ids),  # noqa: E731
                        "correct1": [1] * len(ids), "correct5": [1] * len(ids), "confidence": [0.9] * len(ids)}
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.register_model("m", {"name": "m"})
        store.register_evaluation("e", info)
        store.write_unit("m", "e", 0, rows([0, 1, 2, 3]))
        skip = lambda ids, n: {**info, "n_samples": n, "params": {"skipped_unreadable": len(ids)},  # noqa: E731
                               "skipped_sample_ids": ids}
        with pytest.raises(StoreConflictError, match=r"sample ids 2\), but finished units already hold images up to "
                                                     r"sample id 3"):
            store.register_evaluation("e", skip([2], 7))  # a file inside a finished unit
        with pytest.raises(StoreConflictError, match="already registered"):
            store.register_evaluation("e", {**skip([5], 7), "dataset": "other"})  # anything else: a conflict
        with pytest.raises(StoreConflictError, match="already registered"):
            store.register_evaluation("e", skip([5], 6))  # counts that do not add up
        store.register_evaluation("e", skip([5], 7))  # after every finished unit: accepted
        store.register_evaluation("e", skip([5, 6], 6))  # and once more
        assert store.evaluation_info("e")["n_samples"] == 6
        with pytest.raises(StoreConflictError, match="already registered"):
            store.register_evaluation("e", info)  # files back again: the finished units would move


def test_the_quick_scan_flags_damaged_files_and_never_a_readable_one(tmp_path):
    import numpy as np
    from PIL import Image

    from robustbench_rpc.data.images import unreadable_reason

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    img.save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trailing.jpg").write_bytes(data + bytes(4096))  # bytes after EOI: decodes, so not flagged
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "empty.png").write_bytes(b"")
    img.save(tmp_path / "ok.png")
    img.save(tmp_path / "ok.bmp")
    for name in ("ok.jpg", "trailing.jpg", "ok.png", "ok.bmp"):
        assert unreadable_reason(str(tmp_path / name)) is None, name
    assert "truncated" in unreadable_reason(str(tmp_path / "truncated.jpg"))
    assert "cannot identify image file" in unreadable_reason(str(tmp_path / "empty.png"))
    broken = tmp_path / "broken.png"
    img.save(broken)
    _break_png_stream(broken)
    assert unreadable_reason(str(broken)) is None  # header and IEND intact: only decoding tells
    assert "broken data stream" in unreadable_reason(str(broken), thorough=True)
