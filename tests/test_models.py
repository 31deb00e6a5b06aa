import pytest
import timm
import torch

import robustbench_rpc
from robustbench_rpc.models import MODELS, load_model
from robustbench_rpc.registry import UnknownNameError
from reference_vit import vit_forward

KINDS = {"symmetric": "symmetric", "rpc": "rpc", "softmax": "softmax"}


@pytest.mark.parametrize("name", [n for n in robustbench_rpc.list_models() if MODELS.get(n).task == "classification"])
def test_every_registered_model_builds_forward_backward(name, tiny_kwargs):
    """Every classifier; segmentation models have their own loop (test_segmentation_models.py)."""
    m = timm.create_model(name, **tiny_kwargs)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = m(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("iters,lam,layers", [(1, 0.5, "first"), (2, 4.0, "all"), (4, 1.5, "first"), (3, 2.0, "all")])
def test_rpc_model_matches_reference_forward(iters, lam, layers, tiny_kwargs):
    m = timm.create_model("rpc_symvit_tiny_patch16_224", rpc_iters=iters, rpc_lambda=lam, rpc_layers=layers,
                          **tiny_kwargs).eval()
    kinds = ["rpc" if layers == "all" or i == 0 else "symmetric" for i in range(2)]
    x = torch.randn(3, 3, 32, 32)
    ref = vit_forward(m.state_dict(), x, 3, kinds, iters, lam)
    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)


def test_load_model_normalizes_inside(tiny_kwargs):
    w = load_model("symvit_tiny_patch16_224", **tiny_kwargs)
    assert not w.training
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(w.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(w.data_config["std"]).view(1, 3, 1, 1)
    ref = vit_forward(w.model.state_dict(), (x - mean) / std, 3, ["symmetric"] * 2)
    torch.testing.assert_close(w(x), ref, atol=1e-4, rtol=1e-4)
    assert w.data_config["num_classes"] == 10 and w.data_config["input_size"] == (3, 32, 32)
    assert tuple(w.data_config["mean"]) == pytest.approx((0.485, 0.456, 0.406))


def test_micro_models_use_their_own_contract():
    w = load_model("rpc_symvit_micro_patch4_32")
    assert w.data_config["input_size"] == (3, 32, 32) and w.data_config["num_classes"] == 10
    assert w.data_config["mean"][0] == pytest.approx(0.3057)


def test_timm_baseline_and_unknown_names(tiny_kwargs):
    w = load_model("timm:deit_tiny_patch16_224", **tiny_kwargs)
    assert w(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(UnknownNameError, match="rpc_symvit_tiny_patch16_224"):
        load_model("rpc_symvit_tiny_patch16_24")
    with pytest.raises(UnknownNameError, match="timm model"):
        load_model("timm:not_a_model_xyz")
    with pytest.raises(TypeError, match="unknown model argument"):
        load_model("symvit_micro_patch4_32", embed_dimm=3)
    with pytest.raises(TypeError, match="rpc_"):
        load_model("symvit_micro_patch4_32", rpc_iters=3)


def test_presets_carry_paper_configs():
    m = timm.create_model("rpc_symvit_tiny_6iter_layer1", img_size=32, patch_size=8, num_classes=10)
    assert m.blocks[0].attn.n_iter == 6 and type(m.blocks[1].attn).__name__ == "SymmetricAttention"
    m = timm.create_model("rpc_symvit_tiny_2iter_all", img_size=32, patch_size=8, num_classes=10)
    assert all(b.attn.n_iter == 2 for b in m.blocks)
    assert MODELS.get("rpc_symvit_tiny_2iter_all").attention == "rpc"
