"""The recipe's training data, whatever the dataset: the embedded and CIFAR sets (``data.py``) or image
folders (``folders.py``); this module only dispatches, so those two never import each other back."""
from __future__ import annotations

from typing import Any

from .data import _CIFAR, TrainData, _cifar, _digits, _root
from .folders import folder_data
from .recipe import RecipeError


def build_data(recipe, data_config: dict[str, Any], workers: int = 0, skip_unreadable: bool = False) -> TrainData:
    """The recipe's training data for a model with evaluation contract ``data_config`` (on-disk sets are
    decoded by ``workers`` processes); every root, class folder, image file and option is checked here, before
    any training step (``skip_unreadable``: image files that do not decode are left out, else refused)."""
    name = recipe.data.dataset
    unused = [k for k, used in (("data.root", name != "digits32"), ("data.val_root", name in ("folder", "imagenet")))
              if getattr(recipe.data, k.split(".")[1]) and not used]
    if unused:
        raise RecipeError(f"{unused[0]} is set but {name} does not read it (" +
                          ("embedded data" if name == "digits32" else "its test split validates") + "); drop it")
    if skip_unreadable and name not in ("folder", "imagenet"):
        raise RecipeError(f"--skip-unreadable leaves damaged image files out; {name} reads no image files (only "
                          "folder and imagenet do): drop it")
    if name == "digits32":
        return _digits(recipe)
    if name in _CIFAR:
        return _cifar(name, recipe)
    return folder_data(name, _root(recipe, name), recipe, data_config, workers, skip_unreadable)
