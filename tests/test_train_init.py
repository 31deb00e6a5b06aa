"""train --init: fine-tuning from a checkpoint is recorded in the recipe (path and sha256)."""
import torch

import robustbench_rpc
from robustbench_rpc.models import PACKAGED_DIR, read_checkpoint_metadata, sha256_of
from robustbench_rpc.training import Settings, build_recipe, train


def test_fine_tune_records_its_start(tmp_path):
    recipe = build_recipe(None, {"model.name": "rpc_keyscale_symvit_micro_patch4_32", "optim.epochs": 1,
                                 "optim.batch_size": 256, "optim.lr": 1e-4, "optim.warmup_epochs": 0,
                                 "model.init": "symvit_micro_patch4_32.safetensors", "validation.steps": 0})
    res = train(recipe, tmp_path / "ft", Settings(progress=False), log=lambda *_: None)
    meta = read_checkpoint_metadata(res["last_checkpoint"])
    assert meta["recipe"]["model"]["init"] == "symvit_micro_patch4_32.safetensors"
    shipped = sha256_of(PACKAGED_DIR / "symvit_micro_patch4_32.safetensors")
    assert meta["init_sha256"] == meta["init"]["sha256"] == shipped
    assert res["clean_acc"] > 0.9 and res["n_val"] == 539  # started from SymViT's weights, not from scratch

    m = robustbench_rpc.load_model("rpc_keyscale_symvit_micro_patch4_32", res["last_checkpoint"])
    assert type(m.model.blocks[0].attn).variant_name == "rpc_keyscale"
    assert m.model.blocks[0].attn.n_iter == 2 and m.model.blocks[0].attn.lam == 8.0
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
