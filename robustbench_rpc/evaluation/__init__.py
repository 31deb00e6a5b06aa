"""Evaluating models: what to run, planned and checked before compute, then run into the store.

``suite.py`` suite files -> evaluation specs; ``ood.py`` the OOD protocols; ``plan.py`` (suite, flags) -> a
frozen :class:`~robustbench_rpc.evaluation.plan.Plan`, with ``plan_checks.py`` its refusals; ``preflight.py``
refusals on a built model; ``harness.py`` runs the plan unit by unit into :mod:`robustbench_rpc.store`;
``compute_unit.py`` how one unit becomes per-sample rows. Mirrors :mod:`robustbench_rpc.training` beside it.
The harness stops at the store: the CLI and :func:`robustbench_rpc.benchmark` build reports afterwards.
"""
