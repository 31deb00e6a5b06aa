"""train --init: fine-tuning from a checkpoint is recorded in the recipe (path and sha256)."""
import torch

from robustbench_rpc.models import read_checkpoint_metadata, sha256_of
from robustbench_rpc.train import PACKAGED_CHECKPOINTS, TrainConfig, train


def test_fine_tune_records_its_start(tmp_path):
    out = tmp_path / "ft.safetensors"
    cfg = TrainConfig(model="rpc_keyscale_symvit_micro_patch4_32", epochs=1, batch_size=256, lr=1e-4,
                      warmup_epochs=0, init="symvit_micro_patch4_32.safetensors")
    res = train(cfg, out=out, log=lambda *_: None)
    meta = read_checkpoint_metadata(out)
    assert meta["recipe"]["init"] == "symvit_micro_patch4_32.safetensors"
    assert meta["init_sha256"] == sha256_of(PACKAGED_CHECKPOINTS / "symvit_micro_patch4_32.safetensors")
    assert res["test_acc"] > 0.9  # started from SymViT's weights, not from scratch
    import robustbench_rpc

    m = robustbench_rpc.load_model("rpc_keyscale_symvit_micro_patch4_32", out)
    assert type(m.model.blocks[0].attn).variant_name == "rpc_keyscale"
    assert m.model.blocks[0].attn.n_iter == 2 and m.model.blocks[0].attn.lam == 8.0
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
