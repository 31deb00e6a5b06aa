import pytest
import timm
import torch

import robustbench_rpc  # noqa: F401
from robustbench_rpc.attention import (
    RPCAttention, SymmetricAttention, describe_attention, list_attentions, patch_attention, register_attention,
    set_fused,
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


# -- denormals: PAP flushes them on every intra-op thread, results unchanged ---------------
_TINY_NORMAL = torch.finfo(torch.float32).tiny


def _threads_flushing() -> bool:
    """True iff a parallel elementwise op flushed denormals to zero on *every* thread that ran it (the
    result's bit patterns are read as integers, so the reading thread's own mode does not matter)."""
    x = torch.full((1 << 20,), 1e-39)  # large enough for at::parallel_for to split it over the threads
    bits = torch.mul(x, 1.0001).view(torch.int32)
    zero = bits == 0
    assert bool(zero.all()) or not bool(zero.any()) or torch.get_num_threads() > 1
    return bool(zero.all())


def test_pap_flushes_denormals_on_every_intra_op_thread_forward_and_backward():
    from robustbench_rpc.attention.denormals import coverage, flush_denormals

    if not coverage().startswith("every intra-op thread"):
        pytest.skip(f"flush-to-zero reaches {coverage()} here")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the worker thread is the point: set_flush_denormal alone misses it
    try:
        assert not _threads_flushing()
        x = torch.full((1 << 20,), 1e-39)
        torch.set_flush_denormal(True)  # the calling thread only
        partial = torch.mul(x, 1.0001).view(torch.int32) == 0
        torch.set_flush_denormal(False)
        assert not bool(partial.all()), "torch.set_flush_denormal reached the workers: the premise changed"
        with flush_denormals(torch.zeros(1)):
            assert _threads_flushing()
        assert not _threads_flushing()  # every thread back to the caller's environment

        seen = []

        class Probe(torch.autograd.Function):  # records the mode inside PAP's forward and backward
            @staticmethod
            def forward(ctx, x):
                seen.append(("forward", _threads_flushing()))
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                seen.append(("backward", _threads_flushing()))
                return g

        attn = RPCAttention(48, num_heads=3, n_iter=2, lam=0.5)
        k = torch.randn(1, 3, 9, 16, requires_grad=True)
        v = torch.randn(1, 3, 9, 16)
        out = attn.pursue(k, lambda k2: Probe.apply(torch.nn.functional.scaled_dot_product_attention(k2, k2, v)))
        assert not _threads_flushing()
        out.sum().backward()
        assert not _threads_flushing()
        assert seen == [("forward", True)] * 2 + [("backward", True)] * 2
        # keys without gradient: no node at PAP's entry, the engine's end-of-backward callback restores
        out = attn.pursue(k.detach(), lambda k2: torch.nn.functional.scaled_dot_product_attention(
            k2, k2, v.requires_grad_(True)))
        out.sum().backward()
        assert not _threads_flushing()
    finally:
        torch.set_num_threads(threads)


def _sharp_keys(seed=0):
    """Keys whose PAP iterates give very sharp attention: in float32 37 % of the fourth iteration's
    probabilities are denormal and 20 % zero (the benchmark's regime: unit-variance keys, head dim 64)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 3, 64, 64, generator=g)
    v = torch.randn(2, 3, 64, 64, generator=g)
    return k, v


def test_denormal_heavy_pap_matches_float64_reference_and_the_unflushed_result():
    from robustbench_rpc.attention.denormals import denormals_kept

    k, v = _sharp_keys()
    for fused in (True, False):
        attn = RPCAttention(192, num_heads=3, n_iter=4, lam=4.0, fused_attn=fused)
        inputs = []
        with denormals_kept():
            kept = attn.pursue(k, lambda k2: inputs.append(k2.detach()) or torch.nn.functional.
                               scaled_dot_product_attention(k2, k2, v))
        p = torch.softmax(inputs[-1] @ inputs[-1].transpose(-2, -1) * attn.scale, dim=-1)
        assert float(((p > 0) & (p < _TINY_NORMAL)).float().mean()) > 0.3  # the case is denormal-heavy
        kd = k.double().requires_grad_(True)
        vd = v.double().requires_grad_(True)
        ref = rpc_heads(kd, vd, 4, 4.0, 192)
        kk, vv = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
        got = attn.mix(kk, vv)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got, kept, atol=1e-6, rtol=1e-5)
        g = torch.randn_like(got)
        got.backward(g)
        ref_grads = torch.autograd.grad(ref, (kd, vd), g.double())
        k_kept, v_kept = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
        with denormals_kept():
            attn.mix(k_kept, v_kept).backward(g)
        for a, b, c in zip((kk.grad, vv.grad), ref_grads, (k_kept.grad, v_kept.grad)):
            torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-3)  # fused SDPA's backward: ~4e-5
            torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-5)
