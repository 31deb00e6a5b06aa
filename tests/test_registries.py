"""Every plug-in registry, looped over by name (timm's test_models pattern): a variant, head or diagnostic is
tested the day it is registered, with no test written for it by hand."""
import math

import pytest
import torch

import robustbench_rpc  # noqa: F401  (registers everything)
from robustbench_rpc.attention import get_attention, list_attentions, patch_attention
from robustbench_rpc.diagnostics import list_diagnostics, run_diagnostics
from robustbench_rpc.heads import get_head, list_heads
from robustbench_rpc.models import create_model

HOST = "symvit_micro_patch4_32"
SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def _finite_grads(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is not None
            and not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize("variant", list_attentions())
def test_every_attention_variant_runs_forward_and_backward(variant):
    """Patched into a small host (the variant's own ``host_model`` where it lives in another block
    kind), every registered variant gives finite logits and finite gradients to its weights and input."""
    torch.manual_seed(0)
    cls = get_attention(variant)
    host = getattr(cls, "host_model", HOST)
    model = create_model(host, **(getattr(cls, "host_kwargs", None) or SMALL)).train()
    patch_attention(model, variant, allow_reinit=True)
    size = model.patch_embed.img_size
    x = torch.rand(2, 3, *size, requires_grad=True)
    logits = model(x)
    assert logits.shape[0] == 2 and torch.isfinite(logits).all(), variant
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), variant
    assert not _finite_grads(model), f"{variant}: non-finite gradients in {_finite_grads(model)}"
    attn = [m for m in model.modules() if isinstance(m, cls)]
    assert attn, f"{variant} was not patched into {host}"
    grads = [p.grad for m in attn for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{variant}: no gradient reaches its weights"


@pytest.mark.parametrize("head", list_heads())
def test_every_head_runs_forward_and_backward(head):
    torch.manual_seed(0)
    net = get_head(head)(dim=16, num_tokens=5, num_classes=4)
    tokens = torch.randn(3, 5, 16, requires_grad=True)
    out = net(tokens)
    assert out.shape == (3, 4) and torch.isfinite(out).all(), head
    out.logsumexp(1).sum().backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all(), head
    assert not _finite_grads(net), head


@pytest.mark.parametrize("name", list_diagnostics())
def test_every_diagnostic_gives_finite_rows_and_leaves_the_model_differentiable(name):
    torch.manual_seed(0)
    # PAP in the first block, plain symmetric attention in the second: every diagnostic has a layer to read
    model = create_model("rpc_symvit_micro_patch4_32", rpc_layers=[0], rpc_iters=2, **SMALL).eval()
    x = torch.rand(4, 3, 32, 32)
    rows, axes = run_diagnostics(model, x, [name], batch_size=2)
    assert rows or axes, f"diagnostic {name} gave no rows"
    values = [v for r in rows + axes for v in r.values() if isinstance(v, float)]
    assert values and all(math.isfinite(v) or math.isnan(v) for v in values), name
    assert any(math.isfinite(v) for v in values), f"diagnostic {name}: every value is NaN"
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()  # nothing the diagnostic attached is left behind
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0, name
