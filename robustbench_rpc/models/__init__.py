"""Named model registry (also registered into timm), checkpoint loading and the [0,1] wrapper."""
from .checkpoint import (
    CheckpointError,
    describe_state_dict,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint_file,
    read_checkpoint_metadata,
    save_checkpoint,
    sha256_of,
)
from .contract import ModelContractError, register_model
from .loading import (PACKAGED_DIR, ResolvedModel, create_model, data_config_of, load_model, resolve_checkpoint,
                      resolve_model, split_spec)
from .normalize import Normalized
from .vit import ARCHS, MODELS, ModelEntry, list_models

__all__ = [
    "ARCHS", "MODELS", "CheckpointError", "ModelContractError", "ModelEntry", "PACKAGED_DIR", "register_model",
    "resolve_checkpoint", "Normalized", "create_model", "data_config_of",
    "describe_state_dict", "extract_state_dict", "list_models", "load_checkpoint", "load_model",
    "read_checkpoint_file", "read_checkpoint_metadata", "resolve_model", "ResolvedModel", "save_checkpoint",
    "sha256_of", "split_spec",
]
