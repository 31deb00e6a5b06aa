"""The run's record: everything a run folder holds and every check on it.

``results.py`` the SQLite store (:class:`ResultsStore`); ``schema.py`` its tables and migrations; ``rows.py``
canonical JSON, keys and per-sample columns; ``write_unit.py`` how one computed unit is written; ``errors.py``
the one-line errors; ``skips.py`` a resume that leaves more unreadable files out; ``export.py`` results/*.csv
and *.parquet; ``lock.py`` one run per folder; ``manifest.py`` what a rerun is checked against; ``verify.py``
``robustbench-rpc verify A B``. Units are computed in :mod:`robustbench_rpc.evaluation.compute_unit`.
"""
from .errors import (FolderBusyError, OutputWriteError, StoreConflictError, StoreCorruptError, StoreError,
                     StoreWriteError, corrupt_error, is_corruption, is_write_fault, one_line, output_error,
                     write_error)
from .export import write_tables
from .lock import FolderLock, lock_folder
from .results import CHECKPOINT_INTERVAL_S, ResultsStore
from .rows import (BOOL_COLUMNS, OPTIONAL_SAMPLE_COLUMNS, REQUIRED_SAMPLE_COLUMNS, SAMPLE_COLUMNS, canonical_json,
                   stable_key)
from .schema import EVAL_KINDS, SCHEMA_VERSION

__all__ = ["BOOL_COLUMNS", "CHECKPOINT_INTERVAL_S", "EVAL_KINDS", "FolderBusyError", "FolderLock",
           "OPTIONAL_SAMPLE_COLUMNS", "OutputWriteError", "REQUIRED_SAMPLE_COLUMNS", "ResultsStore", "SAMPLE_COLUMNS",
           "SCHEMA_VERSION", "StoreConflictError", "StoreCorruptError", "StoreError", "StoreWriteError",
           "canonical_json", "corrupt_error", "is_corruption", "is_write_fault", "lock_folder", "one_line",
           "output_error", "stable_key", "write_error", "write_tables"]
