"""Training any model the harness evaluates: clean, PGD-AT (Madry et al. 2018) or TRADES (Zhang et al. 2019),
from a versioned TOML recipe, resumable after kill -9, on torchrun (``robustbench-rpc train``).

One file per concept: ``recipe`` (the TOML schema, validation, overrides), ``objectives/`` (one file per
objective), ``model`` (what is trained), ``data`` + ``folders`` (train splits, augmentation, validation
split), ``loop`` (optimizer, schedule, EMA, epochs), ``validation`` (clean and PGD accuracy with Wilson
intervals), ``state`` (the resumable state), ``ddp`` (torchrun), ``logs`` (console, CSV, curves).
The shipped recipes are in ``recipes/``: ``robustbench-rpc train --recipe NAME``.
"""
from .loop import Settings, train
from .model import PACKAGED_DIR as PACKAGED_CHECKPOINTS
from .objectives import Objective, get_objective, list_objectives, register_objective
from .recipe import RECIPES_DIR, Recipe, RecipeError, build_recipe

__all__ = ["PACKAGED_CHECKPOINTS", "RECIPES_DIR", "Objective", "Recipe", "RecipeError", "Settings", "build_recipe",
           "get_objective", "list_objectives", "register_objective", "train"]
