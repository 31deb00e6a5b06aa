"""The tests that need a CUDA device (run by ``benchmarks/gpu_check.sh``; skipped as a whole without one):
the GPU paths against the CPU ones and the libraries they must agree with."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from reference_vit import rpc_heads  # noqa: E402


def test_rpc_attention_on_cuda_matches_the_float64_reference():
    from robustbench_rpc.attention import RPCAttention

    torch.manual_seed(0)
    attn = RPCAttention(192, num_heads=3, n_iter=4, lam=4.0).cuda()
    k = torch.randn(2, 3, 197, 64, requires_grad=True)
    v = torch.randn(2, 3, 197, 64, requires_grad=True)
    g = torch.randn(2, 3, 197, 64)
    kc, vc = (t.detach().cuda().requires_grad_(True) for t in (k, v))
    out = attn.mix(kc, vc)
    out.backward(g.cuda())
    kd, vd = (t.detach().double().requires_grad_(True) for t in (k, v))
    ref = rpc_heads(kd, vd, 4, 4.0, 192)
    grads = torch.autograd.grad(ref, (kd, vd), g.double())
    torch.testing.assert_close(out.double().cpu(), ref, atol=1e-4, rtol=1e-3)
    for a, b in zip((kc.grad, vc.grad), grads):
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-3, rtol=1e-2)


def test_micro_model_logits_on_cuda_match_cpu_and_autocast_keeps_predictions():
    from robustbench_rpc.models import load_model

    torch.manual_seed(0)
    model = load_model("rpc_symvit_micro_patch4_32").eval()
    x = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        cpu = model(x)
        cuda = model.cuda()(x.cuda())
        with torch.autocast("cuda", dtype=torch.float16):
            half = model(x.cuda()).float()
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(half).all()
    assert float((half.argmax(1).cpu() == cpu.argmax(1)).float().mean()) >= 0.95


def test_pgd_on_cuda_agrees_with_torchattacks_and_stays_in_the_ball():
    import torchattacks

    from robustbench_rpc.attacks import get_attack
    from robustbench_rpc.models import load_model

    torch.manual_seed(0)
    model = load_model("symvit_micro_patch4_32").cuda().eval()
    x = torch.rand(32, 3, 32, 32, device="cuda")
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 4 / 255
    ours = get_attack("pgd", eps=eps, alpha=eps / 4, steps=10, random_start=False, progress=False)(model, x, y)
    ref = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
    assert float((ours - x).abs().max()) <= eps + 1e-6 and float(ours.min()) >= 0 and float(ours.max()) <= 1
    # same algorithm and kernels; CUDA's SDPA backward may reorder sums, so a pixel can round differently
    assert float(((ours - ref).abs() > 1e-5).float().mean()) < 0.01
