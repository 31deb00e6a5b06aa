"""robustbench-rpc: robustness evaluation for vision transformers, built around RPC-Attention.

``import robustbench_rpc`` registers our models into timm and our attention variants into the registry.
The user API is small: ``load_model(name, checkpoint)``, ``register_model(name, **contract)`` (a model of your
own), ``list_models()``, ``load_checkpoint(model, path)``, ``benchmark(model, ...)`` (an nn.Module in memory
through the whole harness, RobustBench-style), and the ``robustbench-rpc`` command line.
"""
try:  # Ctrl-C while torch & co. import: one line and exit 130 for the command line (cli.startup)
    from .cli.startup import startup_guard

    with startup_guard():
        from . import attention  # noqa: F401  (registers the attention variants)
        from .models import list_models, load_checkpoint, load_model, register_model
        from . import heads  # noqa: F401,E402  (registers the BACKBONE+HEAD model form)
        from .api import BenchmarkResult, benchmark  # noqa: E402
except KeyboardInterrupt:
    from .cli.startup import exit_if_cli

    exit_if_cli()
    raise

__version__ = "0.1.0"
__all__ = ["BenchmarkResult", "benchmark", "list_models", "load_checkpoint", "load_model", "register_model",
           "__version__"]
