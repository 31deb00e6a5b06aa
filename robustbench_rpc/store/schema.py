"""The results store's SQLite schema (version 4; ARCHITECTURE.md "Store schema") and its migrations. A leaf.

Per-sample perturbation norms (``linf``, ``l2``, ``l1``, ``l0``) are measured from the scored adversarial image
minus the clean one, flattened over every channel value; ``l0`` counts the values that changed (each channel
value separately, as foolbox's ``LpDistance(0)`` / eagerpy's ``norms.l0`` and FMN-L0 count), not pixels. A
migration adds columns and leaves older rows NULL there: their norms were never measured."""
from __future__ import annotations

SCHEMA_VERSION = 4
MIGRATIONS = {1: ("ALTER TABLE samples ADD COLUMN clean_correct5 INTEGER CHECK (clean_correct5 IN (0, 1))",
                  "ALTER TABLE samples ADD COLUMN plain_correct1 INTEGER CHECK (plain_correct1 IN (0, 1))",
                  "ALTER TABLE samples ADD COLUMN plain_correct5 INTEGER CHECK (plain_correct5 IN (0, 1))"),
              2: (),  # version 3 adds the seg_areas table, which SCHEMA creates (IF NOT EXISTS) on every open
              3: ("ALTER TABLE samples ADD COLUMN l1 REAL",  # version 4: L1 and L0 curves need them per sample
                  "ALTER TABLE samples ADD COLUMN l0 REAL")}
EVAL_KINDS = ("clean", "attack", "corruption", "ood", "shift", "external", "transfer")

JSON_COLUMNS = (("meta", "value_json"), ("models", "info_json"), ("evaluations", "info_json"),
                ("checks", "details_json"))  # every JSON text, parsed on open

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    model_key TEXT PRIMARY KEY,
    info_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    eval_key TEXT PRIMARY KEY,
    info_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    model_key TEXT NOT NULL REFERENCES models(model_key),
    eval_key TEXT NOT NULL REFERENCES evaluations(eval_key),
    unit INTEGER NOT NULL,
    n INTEGER NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (model_key, eval_key, unit)
);
CREATE TABLE IF NOT EXISTS samples (
    model_key TEXT NOT NULL,
    eval_key TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    label INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    correct1 INTEGER NOT NULL CHECK (correct1 IN (0, 1)),
    correct5 INTEGER NOT NULL CHECK (correct5 IN (0, 1)),
    confidence REAL NOT NULL,
    clean_correct1 INTEGER CHECK (clean_correct1 IN (0, 1)),
    linf REAL,
    l2 REAL,
    clean_correct5 INTEGER CHECK (clean_correct5 IN (0, 1)),
    plain_correct1 INTEGER CHECK (plain_correct1 IN (0, 1)),
    plain_correct5 INTEGER CHECK (plain_correct5 IN (0, 1)),
    l1 REAL,
    l0 REAL,
    PRIMARY KEY (model_key, eval_key, sample_id),
    FOREIGN KEY (model_key, eval_key, unit) REFERENCES units(model_key, eval_key, unit)
        DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_unit ON samples(model_key, eval_key, unit);
CREATE TABLE IF NOT EXISTS seg_areas (
    model_key TEXT NOT NULL,
    eval_key TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    areas_json TEXT NOT NULL,
    PRIMARY KEY (model_key, eval_key, sample_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checks (
    model_key TEXT NOT NULL,
    eval_key TEXT NOT NULL,
    "check" TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    details_json TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model_key, eval_key, "check")
);
"""
