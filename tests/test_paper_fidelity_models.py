"""Paper checkpoints configure and load into our models, checked against a reference written here.

The reference below follows the structure of the paper's public code (``Attack/softmax.py`` for SymViT /
PAP, ``Scaled_Attention/softmax.py`` for Scaled Attention): its own modules, explicit matmuls, the PAP loop
as ``n - 1`` iterations plus a final one with the ``le``/``ge`` masks, and the ``robust and (layer < 0 or
layerth == layer)`` block rule. It shares no code with the project's attention classes. The reference
model's random weights are saved in the paper's checkpoint layout and loaded by name, without rpc kwargs.
"""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from robustbench_rpc.attention import describe_attention
from robustbench_rpc.evaluation.plan import Plan, RunConfig
from robustbench_rpc.models import CheckpointError, load_model
from robustbench_rpc.models.loading import resolve_model
from robustbench_rpc.evalspec import SuiteError
from tiny_runs import suite_text

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
CFG = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)  # 17 tokens, head dim 16


class RefSymAttention(nn.Module):
    """SymViT / PAP as the paper's Attack/softmax.py Attention(dim, heads, robust, layerth, n, lambd, layer)."""

    def __init__(self, dim, num_heads, robust, layerth, n, lambd, layer):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.robust, self.layerth, self.n, self.lambd, self.layer = robust, layerth, n, lambd, layer
        self.qkv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        k, v = self.qkv(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.robust and (self.layer < 0 or self.layerth == self.layer):
            lam = self.lambd
            l = torch.zeros_like(k)
            y = torch.zeros_like(k)
            mu = N * C / 4 / k.norm(p=1, dim=[-1, -2], keepdim=True)
            for _ in range(self.n - 1):
                s = k - l + y / mu
                s = (s - lam * mu) * s.ge(lam * mu).int() + (s + lam * mu) * s.le(-lam * mu).int()
                k2 = k - s - y / mu
                l = ((k2 @ k2.transpose(-2, -1)) * self.scale).softmax(-1) @ v
                y = y + mu * (k - l - s)
            s = k - l + y / mu
            s = (s - lam * mu) * s.ge(lam * mu).int() + (s + lam * mu) * s.le(-lam * mu).int()
            k2 = k - s - y / mu
            x = ((k2 @ k2.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        else:
            x = ((k @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class RefScaledAttention(nn.Module):
    """Scaled_Attention/softmax.py Attention: 3*dim qkv, s scalar (1,) or (heads, N, N)."""

    def __init__(self, dim, num_heads, ttl_tokens, s_scalar):
        super().__init__()
        self.num_heads, self.scale, self.s_scalar = num_heads, (dim // num_heads) ** -0.5, s_scalar
        self.qkv = nn.Linear(dim, 3 * dim)
        self.s = nn.Parameter(torch.zeros(1) if s_scalar else torch.zeros(num_heads, ttl_tokens, ttl_tokens))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        eye = torch.eye(N, dtype=x.dtype).expand(B, self.num_heads, N, N)
        if self.s_scalar:
            sym = ((k @ k.transpose(-2, -1)) * self.scale).softmax(-1)
            v = (eye - sym * self.s) @ v
        else:
            v = (eye - self.s.unsqueeze(0).expand(B, self.num_heads, N, N)) @ v
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class RefMlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim, attn):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), attn
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), RefMlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefPatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)


class RefViT(nn.Module):
    """The paper's VisionTransformer (class token, pre-norm blocks, final norm, head on the class token)."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, num_classes, attn_factory):
        super().__init__()
        n = (img_size // patch_size) ** 2 + 1
        self.patch_embed = RefPatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim))
        self.blocks = nn.Sequential(*[RefBlock(embed_dim, attn_factory(i, n)) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        torch.manual_seed(1234)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.randn_like(p) * (0.6 if name.endswith("qkv.weight") else 0.2))

    def forward(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(t))[:, 0])


def ref_symvit(robust, n, lambd, layer, num_classes=7, **cfg):
    c = {**CFG, **cfg}
    return RefViT(c["img_size"], c["patch_size"], c["embed_dim"], c["depth"], c["num_heads"], num_classes,
                  lambda i, _: RefSymAttention(c["embed_dim"], c["num_heads"], robust, i, n, lambd, layer)).double()


def paper_file(path, ref, **args):
    base = dict(model="deit_tiny_patch16_224", input_size=224, nb_classes=7, lr=5e-4, epoch=299)
    torch.save({"model": ref.float().state_dict(), "args": argparse.Namespace(**(base | args)), "epoch": 299,
                "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}, "scaler": {}}, path)
    ref.double()
    return path


def logits(model, x):
    return model.double()(x)


def ref_logits(ref, x):
    return ref((x - IMAGENET_MEAN.double()) / IMAGENET_STD.double())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 32, dtype=torch.float64)


PAP_CASES = [  # (robust, layer, blocks that run PAP in the paper's code)
    (True, -1, [0, 1, 2]), (True, 1, [1]), (True, 3, []), (True, 7, []), (False, -1, []), (False, 1, []),
]


@pytest.mark.parametrize("name", ["rpc_symvit_tiny_patch16_224", "symvit_tiny_patch16_224"])
@pytest.mark.parametrize("robust,layer,blocks", PAP_CASES)
def test_paper_args_configure_the_model(name, robust, layer, blocks, images, tmp_path):
    ref = ref_symvit(robust, 3, 2.0, layer)
    path = paper_file(tmp_path / "best.pth", ref, robust=robust, num_iter=3, lambd=2.0, layer=layer)
    w = load_model(name, checkpoint=path, **{k: v for k, v in CFG.items()})  # no rpc kwargs, no num_classes
    assert w.num_classes == 7  # nb_classes from the file
    kinds = [row["variant"] for row in describe_attention(w)]
    assert kinds == ["rpc" if i in blocks else "symmetric" for i in range(3)]
    assert all(row.get("n_iter", 3) == 3 and row.get("lambda", 2.0) == 2.0 for row in describe_attention(w))
    torch.testing.assert_close(logits(w, images), ref_logits(ref, images), atol=1e-8, rtol=1e-7)
    s = w.model_settings
    assert s["num_classes"] == {"value": 7, "source": "checkpoint args (nb_classes=7)"}
    assert s["attention"]["blocks"] == blocks and s["attention"]["source"].startswith("checkpoint args (robust=")
    if blocks:
        assert s["rpc_iters"] == {"value": 3, "source": "checkpoint args (num_iter=3)"}
        assert s["rpc_lambda"]["value"] == 2.0 and s["rpc_lambda"]["source"].startswith("checkpoint args")
    assert s["paper_model"]["value"] == "deit_tiny_patch16_224"
    assert s["img_size"]["source"] == "argument" and s["img_size"]["checkpoint args"] == "input_size=224"


def test_reference_discriminates(images):
    """The configurations above really differ (so a wrong mapping of robust/layer would fail)."""
    outs = {(r, l): ref_logits(ref_symvit(r, 3, 2.0, l), images) for r, l, _ in PAP_CASES[:3]}
    base = outs[(True, 3)]  # PAP nowhere = plain symmetric
    assert (outs[(True, -1)] - base).abs().max() > 1e-2
    assert (outs[(True, 1)] - base).abs().max() > 1e-2
    assert (outs[(True, -1)] - outs[(True, 1)]).abs().max() > 1e-2
    assert (ref_logits(ref_symvit(True, 2, 2.0, -1), images) - outs[(True, -1)]).abs().max() > 1e-3  # iterations
    assert (ref_logits(ref_symvit(True, 3, 1.0, -1), images) - outs[(True, -1)]).abs().max() > 1e-3  # lambda


def test_contradicting_kwargs_raise_naming_both_values(images, tmp_path):
    ref = ref_symvit(True, 3, 2.0, -1)
    path = paper_file(tmp_path / "rpc3.pth", ref, robust=True, num_iter=3, lambd=2.0, layer=-1)
    name = "rpc_symvit_tiny_patch16_224"
    with pytest.raises(CheckpointError) as e:
        load_model(name, checkpoint=path, rpc_iters=5, **CFG)
    msg = str(e.value)
    assert str(path) in msg and "rpc_iters" in msg and "3" in msg and "rpc_iters=5" in msg and "num_iter=3" in msg
    assert "override_checkpoint_args" in msg
    with pytest.raises(CheckpointError, match=r"(?s)lambd=2\.0.*rpc_lambda=4\.0"):
        load_model(name, checkpoint=path, rpc_lambda=4.0, **CFG)
    with pytest.raises(CheckpointError, match=r"(?s)\[0, 1, 2\].*layer=-1.*rpc_layers='first'"):
        load_model(name, checkpoint=path, rpc_layers="first", **CFG)
    with pytest.raises(CheckpointError, match=r"(?s)nb_classes=7.*num_classes=10"):
        load_model(name, checkpoint=path, num_classes=10, **CFG)
    # a preset whose defaults contradict the file: the safe default is an error naming both and the base name
    with pytest.raises(CheckpointError) as e:
        load_model("rpc_symvit_tiny_6iter_layer1", checkpoint=path, **CFG)
    msg = str(e.value)
    assert "rpc_symvit_tiny_6iter_layer1 presets rpc_iters=6" in msg and "num_iter=3" in msg and "rpc_symvit_tiny_patch16_224" in msg
    # consistent kwargs are fine and recorded as coming from the file
    w = load_model(name, checkpoint=path, rpc_iters=3, rpc_lambda=2.0, rpc_layers="all", **CFG)
    assert w.model_settings["rpc_iters"]["source"].startswith("checkpoint args")
    # robust off: asking for PAP contradicts the file
    plain = paper_file(tmp_path / "sym.pth", ref_symvit(False, 1, 0.0, 0), robust=False, num_iter=1, lambd=0, layer=0)
    with pytest.raises(CheckpointError, match=r"(?s)robust=False.*rpc_iters=4"):
        load_model(name, checkpoint=plain, rpc_iters=4, **CFG)


def test_override_runs_what_was_given(images, tmp_path):
    path = paper_file(tmp_path / "rpc3.pth", ref_symvit(True, 3, 2.0, -1), robust=True, num_iter=3, lambd=2.0,
                      layer=-1)
    w = load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, rpc_iters=2, rpc_layers=[1],
                   override_checkpoint_args=True, **CFG)
    assert [r["variant"] for r in describe_attention(w)] == ["symmetric", "rpc", "symmetric"]
    assert describe_attention(w)[1]["n_iter"] == 2 and describe_attention(w)[1]["lambda"] == 2.0  # lambda: file
    torch.testing.assert_close(logits(w, images), ref_logits(ref_symvit(True, 2, 2.0, 1), images),
                               atol=1e-8, rtol=1e-7)
    s = w.model_settings
    assert s["rpc_iters"]["value"] == 2 and "overrides checkpoint args num_iter=3" in s["rpc_iters"]["source"]
    assert s["rpc_lambda"]["source"] == "checkpoint args (lambd=2.0)"
    w = load_model("rpc_symvit_tiny_6iter_layer1", checkpoint=path, override_checkpoint_args=True, **CFG)
    assert describe_attention(w)[0]["n_iter"] == 6 and describe_attention(w)[1]["variant"] == "symmetric"
    assert w.model_settings["rpc_iters"]["source"].startswith("preset rpc_symvit_tiny_6iter_layer1 (overrides")


def test_class_count_from_head_when_args_lack_nb_classes(tmp_path, images):
    ref = ref_symvit(True, 2, 1.0, 0, num_classes=5)
    path = paper_file(tmp_path / "h.pth", ref, robust=True, num_iter=2, lambd=1.0, layer=0, nb_classes=None)
    w = load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, **CFG)
    assert w.num_classes == 5 and w.model_settings["num_classes"]["source"] == "checkpoint args (head.weight rows)"
    torch.testing.assert_close(logits(w, images), ref_logits(ref, images), atol=1e-8, rtol=1e-7)


def test_plan_validates_with_the_files_settings(tmp_path):
    """The meta-device validation of a run sees the file's class count and PAP settings."""
    kw = dict(CFG, img_size=32)
    bad = paper_file(tmp_path / "c7.pth", ref_symvit(True, 3, 2.0, -1), robust=True, num_iter=3, lambd=2.0, layer=-1)
    with pytest.raises(SuiteError, match="predicts 7 classes"):
        Plan(RunConfig(suite="quick", models=[f"rpc_symvit_tiny_patch16_224:{bad}"], model_kwargs=kw, device="cpu"))
    good = paper_file(tmp_path / "c10.pth", ref_symvit(True, 3, 2.0, 1, num_classes=10), robust=True, num_iter=3,
                      lambd=2.0, layer=1, nb_classes=10)
    plan = Plan(RunConfig(suite="quick", models=[f"symvit_tiny_patch16_224:{good}"], model_kwargs=kw, device="cpu"))
    s = plan.models[0].settings
    assert s["rpc_iters"]["value"] == 3 and s["attention"] == {
        "value": "rpc", "blocks": [1], "source": "checkpoint args (robust=True, layer=1)",
        "built_as": "rpc_symvit_tiny_patch16_224"}
    with pytest.raises(CheckpointError, match="rpc_iters=9"):
        Plan(RunConfig(suite="quick", models=[f"symvit_tiny_patch16_224:{good}"],
                       model_kwargs=dict(kw, rpc_iters=9), device="cpu"))
    plan = Plan(RunConfig(suite="quick", models=[f"symvit_tiny_patch16_224:{good}"],
                          model_kwargs=dict(kw, rpc_iters=9, override_checkpoint_args=True), device="cpu"))
    assert plan.models[0].settings["rpc_iters"]["value"] == 9


def test_paper_small_348_loads_and_384_names_the_right_model(tmp_path, images):
    small = dict(img_size=32, patch_size=16, embed_dim=348, depth=1, num_heads=6)  # head dim 58, as the paper
    ref = ref_symvit(True, 2, 1.0, 0, **small)
    path = paper_file(tmp_path / "small.pth", ref, model="deit_small_patch16_224", robust=True, num_iter=2,
                      lambd=1.0, layer=0)
    kw = {k: v for k, v in small.items() if k not in ("embed_dim", "num_heads")}  # dims come from the name
    for name in ("rpc_symvit_small_paper_patch16_224", "symvit_small_paper_patch16_224"):
        w = load_model(name, checkpoint=path, **kw)
        assert w.model.embed_dim == 348 and w.model.blocks[0].attn.head_dim == 58
        torch.testing.assert_close(logits(w, images), ref_logits(ref, images), atol=1e-8, rtol=1e-7)
    with pytest.raises(CheckpointError) as e:
        load_model("rpc_symvit_small_patch16_224", checkpoint=path, **kw)
    msg = str(e.value)
    assert str(path) in msg and "embed_dim 348" in msg and "384" in msg
    assert "load it as rpc_symvit_small_paper_patch16_224" in msg and "mis-shaped keys" in msg
    # the small paper presets are the paper's small too
    w = load_model("rpc_symvit_small_2iter_all", checkpoint=None, **kw)
    assert w.model.embed_dim == 348


def ref_scaled(s_scalar, depth=2):
    c = dict(CFG, depth=depth)
    ref = RefViT(c["img_size"], c["patch_size"], c["embed_dim"], depth, c["num_heads"], 7,
                 lambda i, n: RefScaledAttention(c["embed_dim"], c["num_heads"], n, s_scalar)).double()
    with torch.no_grad():  # the parameter s trained away from 0, so the test sees it
        for b in ref.blocks:
            b.attn.s.copy_(torch.randn_like(b.attn.s) * (0.5 if s_scalar else 0.05) + (0.7 if s_scalar else 0))
    return ref


@pytest.mark.parametrize("s_scalar,name", [(True, "scaled_alpha_vit_tiny_patch16_224"),
                                           (False, "scaled_vit_tiny_patch16_224")])
def test_scaled_attention_matches_paper(s_scalar, name, images, tmp_path):
    ref = ref_scaled(s_scalar)
    kw = dict(CFG, depth=2)
    plain = tmp_path / "plain.pth"
    torch.save(ref.float().state_dict(), plain)  # a bare state dict: no args, the name decides the form
    ref.double()
    w = load_model(name, checkpoint=plain, num_classes=7, **kw)
    assert w.model.blocks[0].attn.s.shape == ((1,) if s_scalar else (3, 17, 17))
    out = logits(w, images)
    torch.testing.assert_close(out, ref_logits(ref, images), atol=1e-8, rtol=1e-7)
    with torch.no_grad():  # s matters: zeroing it changes the output
        for b in ref.blocks:
            b.attn.s.zero_()
    assert (ref_logits(ref, images) - out).abs().max() > 1e-3

    ref = ref_scaled(s_scalar)
    path = paper_file(tmp_path / "scaled.pth", ref, s_scalar=s_scalar)
    w = load_model(name, checkpoint=path, **kw)
    assert w.model_settings["scaled_form"]["source"] == f"checkpoint args (s_scalar={s_scalar})"
    torch.testing.assert_close(logits(w, images), ref_logits(ref, images), atol=1e-8, rtol=1e-7)
    other = "scaled_vit_tiny_patch16_224" if s_scalar else "scaled_alpha_vit_tiny_patch16_224"
    with pytest.raises(CheckpointError, match=rf"(?s)s_scalar={s_scalar}.*{other} presets.*load it as {name}"):
        load_model(other, checkpoint=path, **kw)


def test_scaled_default_init_is_the_papers():
    for name, shape in (("scaled_vit_tiny_patch16_224", (3, 17, 17)), ("scaled_alpha_vit_tiny_patch16_224", (1,))):
        w = load_model(name, num_classes=7, **dict(CFG, depth=1))
        s = w.model.blocks[0].attn.s
        assert s.shape == shape and torch.count_nonzero(s) == 0 and w.model.blocks[0].attn.qkv.out_features == 144


def test_resolve_model_leaves_other_models_alone(tmp_path):
    r = resolve_model("timm:deit_tiny_patch16_224", None, {"num_classes": 3})
    assert r.name == "timm:deit_tiny_patch16_224" and r.kwargs == {"num_classes": 3} and r.settings == {}
    r = resolve_model("rpc_symvit_tiny_5iter_layer1", None, {})
    assert r.settings["rpc_iters"] == {"value": 5, "source": "preset rpc_symvit_tiny_5iter_layer1"}
    assert r.settings["rpc_lambda"] == {"value": 4.0, "source": "model default"}


CLEAN_SUITE = suite_text(dict(kind="clean"), name="clean_only", models=None, batch_size=4, seed=1, limit=4)


def test_cli_run_records_where_settings_came_from(tmp_path, capsys):
    """End to end: a paper checkpoint on the CLI; the model info and manifest say which setting came from where."""
    import json
    import sqlite3

    from robustbench_rpc.cli.commands import main

    micro = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4)
    ref = RefViT(32, 4, 64, 4, 4, 10, lambda i, _: RefSymAttention(64, 4, True, i, 2, 3.0, 2))
    for b in ref.blocks:  # the micro models' MLP ratio is 2
        b.mlp.fc1, b.mlp.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)
    path = paper_file(tmp_path / "micro.pth", ref, model="deit_micro", input_size=32, nb_classes=10, robust=True,
                      num_iter=2, lambd=3.0, layer=2)
    suite = tmp_path / "clean.toml"
    suite.write_text(CLEAN_SUITE)
    spec = f"rpc_symvit_micro_patch4_32:{path}"
    base = ["run", "--suite", str(suite), "--model", spec, "--no-progress", "--device", "cpu", "--no-report"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    s = next(iter(manifest["extra"]["model_settings"].values()))
    assert s["rpc_iters"] == {"value": 2, "source": "checkpoint args (num_iter=2)"}
    assert s["attention"]["blocks"] == [2]
    with sqlite3.connect(tmp_path / "a" / "results.sqlite") as con:
        (info,) = con.execute("SELECT info_json FROM models").fetchone()
    info = json.loads(info)
    assert info["settings"]["rpc_lambda"]["source"] == "checkpoint args (lambd=3.0)"
    assert [g["layers"] for g in info["attention"]["groups"] if g["variant"] == "rpc"] == [[2]]

    assert main(base + ["--out", str(tmp_path / "b"), "--model-arg", "rpc_iters=5"]) == 2
    err = capsys.readouterr().err
    assert "num_iter=2" in err and "rpc_iters=5" in err and str(path) in err
    assert main(base + ["--out", str(tmp_path / "c"), "--model-arg", "rpc_iters=5", "--override-checkpoint-args"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    s = next(iter(manifest["extra"]["model_settings"].values()))
    assert s["rpc_iters"]["value"] == 5 and "overrides checkpoint args" in s["rpc_iters"]["source"]
