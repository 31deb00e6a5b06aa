"""``python -m robustbench_rpc`` (also what torchrun launches: ``torchrun ... -m robustbench_rpc run``)."""
import sys

from .cli.commands import main

sys.exit(main())
