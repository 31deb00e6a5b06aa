"""``robustbench-rpc``: ``parser.py`` declares each subcommand's arguments, ``commands.py`` does them."""
from .commands import main

__all__ = ["main"]
