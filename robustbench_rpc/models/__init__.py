"""Named model registry (also registered into timm), checkpoint loading and the [0,1] wrapper."""
from .checkpoint import (
    PACKAGED_DIR, PRETRAINED, CheckpointError, describe_state_dict, extract_state_dict, load_checkpoint,
    read_checkpoint_file, read_checkpoint_metadata, resolve_checkpoint, save_checkpoint, sha256_of, split_spec,
)
from .contract import ModelContractError, register_model
from .loading import (
    ModelForm, create_model, create_pretrained, data_config_of, form_of, load_model, register_model_form,
)
from .normalize import Normalized
from .paper_args import ResolvedModel, resolve_model
from .vit import ARCHS, MODELS, ModelEntry, list_models
from . import fan  # noqa: E402,F401  FAN-ViT and RPC-FAN register themselves (models/fan.py)
from . import segmenter  # noqa: E402,F401  Segmenter models register themselves (models/segmenter.py)

__all__ = [
    "ARCHS", "MODELS", "PACKAGED_DIR", "PRETRAINED", "CheckpointError", "ModelContractError", "ModelEntry",
    "ModelForm", "Normalized", "ResolvedModel", "create_model", "create_pretrained", "data_config_of",
    "describe_state_dict", "extract_state_dict", "form_of", "list_models", "load_checkpoint", "load_model",
    "read_checkpoint_file", "read_checkpoint_metadata", "register_model", "register_model_form", "resolve_checkpoint",
    "resolve_model", "save_checkpoint", "sha256_of", "split_spec",
]
