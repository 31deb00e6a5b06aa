import pytest
import timm
import torch

import robustbench_rpc  # noqa: F401
from robustbench_rpc.attention import (
    RPCAttention, SymmetricAttention, describe_attention, list_attentions, patch_attention,
    register_attention, set_fused,
)
from robustbench_rpc.registry import UnknownNameError
from reference_vit import rpc_heads

torch.manual_seed(0)


def test_registry_lists_paper_variants():
    assert {"softmax", "symmetric", "rpc", "scaled", "scaled_symmetric"} <= set(list_attentions())


@pytest.mark.parametrize("n_iter", [1, 2, 4])
@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("fused", [True, False])
def test_rpc_matches_independent_pap(n_iter, lam, fused):
    attn = RPCAttention(48, num_heads=3, qkv_bias=True, n_iter=n_iter, lam=lam, fused_attn=fused).eval()
    x = torch.randn(2, 17, 48)
    k, v = attn.keys_values(x)
    ref = rpc_heads(k, v, n_iter, lam, 48)
    got = attn.mix(k, v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_rpc_threshold_actually_sparsifies():
    """With a tiny lambda most keys are thresholded into S; the output must differ from symmetric attention."""
    x = torch.randn(2, 17, 48)
    sym = SymmetricAttention(48, 3, qkv_bias=True).eval()
    rpc = RPCAttention(48, 3, qkv_bias=True, n_iter=1, lam=0.05).eval()
    rpc.load_state_dict(sym.state_dict())
    assert not torch.allclose(sym(x), rpc(x), atol=1e-3)


def test_patch_same_variant_keeps_outputs(tiny_kwargs):
    m = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    before = m(x)
    patch_attention(m, "symmetric", layers="all")
    torch.testing.assert_close(m(x), before)
    v = timm.create_model("vit_micro_patch4_32", **tiny_kwargs).eval()
    before = v(x)
    patch_attention(v, "softmax", layers="all")
    torch.testing.assert_close(v(x), before)


def test_patch_keeps_weights_and_layers(tiny_kwargs):
    m = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs).eval()
    w = m.blocks[1].attn.qkv.weight.clone()
    patch_attention(m, "rpc", layers=[1], n_iter=3, lam=2.0)
    kinds = [r["variant"] for r in describe_attention(m)]
    assert kinds == ["symmetric", "rpc"]
    assert torch.equal(m.blocks[1].attn.qkv.weight, w)
    assert describe_attention(m)[1]["n_iter"] == 3
    with pytest.raises(ValueError, match="out of range"):
        patch_attention(m, "rpc", layers=[5])
    with pytest.raises(UnknownNameError, match="rpc"):
        patch_attention(m, "rcp")


def test_fused_and_explicit_paths_agree(tiny_kwargs):
    for name in ("rpc_symvit_micro_patch4_32", "symvit_micro_patch4_32", "scaled_vit_tiny_patch16_224"):
        m = timm.create_model(name, **tiny_kwargs).eval()
        x = torch.randn(2, 3, 32, 32)
        a = m(x)
        set_fused(m, False)
        torch.testing.assert_close(m(x), a, atol=1e-5, rtol=1e-4)


def test_scaled_forms(tiny_kwargs):
    m = timm.create_model("vit_micro_patch4_32", **tiny_kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    patch_attention(m, "scaled", layers="all", form="matrix")  # s = 0 -> plain softmax attention, weights kept
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-4)
    assert m.blocks[0].attn.s.shape == (3, 17, 17)
    v = timm.create_model("vit_micro_patch4_32", **tiny_kwargs).eval()
    patch_attention(v, "scaled", layers="all", form="scalar")  # the paper's alpha x Asym: s (1,), init 0
    assert v.blocks[0].attn.s.shape == (1,) and v.blocks[0].attn.qkv.out_features == 3 * 48
    assert v.blocks[0].attn.s.detach().item() == 0.0
    s = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs).eval()
    patch_attention(s, "scaled_symmetric", layers="all", s_init=0.0)  # project variant: V - 0*A_kk V = V
    blk = s.blocks[0].attn
    h = torch.randn(2, 17, 48)
    v = blk.qkv(h).reshape(2, 17, 2, 3, 16)[:, :, 1].reshape(2, 17, 48)
    torch.testing.assert_close(blk(h), blk.proj(v))
    with pytest.raises(ValueError, match="Scaled S"):
        patch_attention(m, "scaled", form="diag")
    with pytest.raises(TypeError, match="scaled_symmetric"):
        patch_attention(m, "scaled", form="scalar", s_init=-1.0)


def test_user_variant_plugs_in_with_one_decorator(tiny_kwargs):
    @register_attention("test_mean_attention")
    class MeanAttention(SymmetricAttention):
        def mix(self, k, v):
            return v.mean(dim=-2, keepdim=True).expand_as(v)

    m = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs).eval()
    patch_attention(m, "test_mean_attention", layers="first")
    assert describe_attention(m)[0]["variant"] == "test_mean_attention"
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_weights_that_cannot_be_kept_are_an_error_naming_them(tiny_kwargs):
    """softmax -> symmetric re-initialised the 3*dim qkv silently (a trained model evaluated at chance)."""
    from robustbench_rpc.attention import AttentionReinitError

    v = timm.create_model("vit_micro_patch4_32", **tiny_kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    before = v(x)
    with pytest.raises(AttentionReinitError) as e:
        patch_attention(v, "symmetric", layers="all")
    msg = str(e.value)
    assert "blocks.0.attn.qkv.weight (144x48 -> 96x48)" in msg and "allow_reinit=True" in msg
    assert "--attention-reinit" in msg and "\n" not in msg
    assert [r["variant"] for r in describe_attention(v)] == ["softmax", "softmax"]  # untouched
    torch.testing.assert_close(v(x), before)
    patch_attention(v, "symmetric", layers="first", allow_reinit=True)
    assert v.attention_reinit == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    assert [r["variant"] for r in describe_attention(v)] == ["symmetric", "softmax"]
    m = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs)
    patch_attention(m, "rpc")  # everything fits: no opt-in needed, nothing recorded
    assert not hasattr(m, "attention_reinit")


def test_unknown_variant_arguments_raise_with_did_you_mean(tiny_kwargs):
    """patch_attention(m, 'rpc', n_iters=6) ran the default 4 iterations: the variants swallow **_."""
    from robustbench_rpc.attention import UnknownVariantArgumentError, build_like, check_variant_args

    m = timm.create_model("symvit_micro_patch4_32", **tiny_kwargs)
    with pytest.raises(UnknownVariantArgumentError, match=r"'rpc' has no parameter 'n_iters'\. Did you mean: n_iter"):
        patch_attention(m, "rpc", n_iters=6)
    with pytest.raises(TypeError, match="'lamda'.*Did you mean: lam"):
        build_like(m.blocks[0].attn, "rpc", lamda=2.0)
    with pytest.raises(TypeError, match="'scaled_symmetric' has no parameter 's_int'.*s_init"):
        patch_attention(m, "scaled_symmetric", s_int=0.0)
    assert [r["variant"] for r in describe_attention(m)] == ["symmetric"] * 2
    check_variant_args("rpc", ["n_iter", "lam", "qkv_bias"])  # own and forwarded-to-base parameters are fine
    patch_attention(m, "rpc", n_iter=6)
    assert m.blocks[0].attn.n_iter == 6


@pytest.mark.parametrize("n_iter", [1, 2, 4])
@pytest.mark.parametrize("fused", [True, False])
def test_rpc_gradients_match_autograd_of_independent_pap(n_iter, fused):
    """The hand-written backward of the PAP steps (``_PAPStep``, ``_SymmetricClamp``) against autograd
    through the plain reference, in float64, for gradients into the keys (threshold path included) and values.
    lam=0.5 leaves entries on both sides of the threshold, so both branches of the clamp carry gradient."""
    torch.manual_seed(n_iter)
    attn = RPCAttention(48, num_heads=3, n_iter=n_iter, lam=0.5, fused_attn=fused).double()
    k = torch.randn(2, 3, 17, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 17, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 17, 16, dtype=torch.float64)
    got = torch.autograd.grad(attn.mix(k, v), (k, v), g)
    ref = torch.autograd.grad(rpc_heads(k, v, n_iter, 0.5, 48), (k, v), g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_pap_step_functions_pass_gradcheck():
    from robustbench_rpc.attention.rpc import _PAPStep, symmetric_clamp

    torch.manual_seed(0)
    shape = (2, 2, 5, 3)
    k, P, L = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    tau = (0.5 + torch.rand(2, 2, 1, 1, dtype=torch.float64)).requires_grad_(True)
    for last in (True, False):
        assert torch.autograd.gradcheck(lambda *a: _PAPStep.apply(*a, last), (k, P, L, tau))
    assert torch.autograd.gradcheck(symmetric_clamp, (k, tau))


def test_rpc_refuses_second_derivatives_instead_of_returning_wrong_ones():
    attn = RPCAttention(48, num_heads=3, n_iter=3, lam=0.5)
    k = torch.randn(1, 3, 9, 16, requires_grad=True)
    v = torch.randn(1, 3, 9, 16)
    (g,) = torch.autograd.grad(attn.mix(k, v).sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()
