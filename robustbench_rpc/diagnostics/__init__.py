"""Diagnostics computed inside a model's own forward pass: PAP iterates and the paper's KPCA checks.

    from robustbench_rpc.diagnostics import run_diagnostics, diagnose_inputs
    rows, axis_rows = run_diagnostics(model, images)              # every registered diagnostic
    rows, axis_rows = diagnose_inputs(model, dataset, attack=("pgd", {"eps": 4/255, "steps": 10}),
                                      corruption=("gaussian_noise", 3))

One file per diagnostic, each registered by name (``@register_diagnostic``) and naming its source:
``pap`` (pap.py: PAP's S/L/mu/threshold per layer, head and iteration), ``projection_loss`` and ``eq11``
(kpca.py: Sec. 2.2.1's projection loss, Eq. 11's eigenvector check), and the reproduction study's checks of
those claims: ``kpca_alignment`` (kpca_alignment.py), ``kpca_reconstruction_terms`` (kpca_terms.py),
``kpca_eigenvalues`` (kpca_eigen.py). ``robustbench-rpc diagnose`` is the
command line; a suite asks for them with a ``kind = "diagnostics"`` evaluation.
"""
from . import kpca, kpca_alignment, kpca_eigen, kpca_terms, pap  # noqa: F401  (register the built-ins)
from .base import (
    DIAGNOSTICS, Accumulator, Diagnostic, attention_blocks, explicit_path, get_diagnostic, list_diagnostics,
    record_iterates, register_diagnostic, run_diagnostics,
)
from .inputs import INPUT_KINDS, diagnose_inputs
from .output import CSV_COLUMNS, write_outputs

__all__ = [
    "CSV_COLUMNS", "DIAGNOSTICS", "INPUT_KINDS", "Accumulator", "Diagnostic", "attention_blocks",
    "diagnose_inputs", "explicit_path", "get_diagnostic", "list_diagnostics", "record_iterates",
    "register_diagnostic", "run_diagnostics", "write_outputs",
]
