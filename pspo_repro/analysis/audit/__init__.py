"""The claims audit (:mod:`pspo_repro.analysis.audit.document`), as a package."""

from pspo_repro.analysis.audit.document import (
    IDENTITIES_FILE,
    IDENTITY_LABELS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SECTIONS,
    SUPPORTED,
    VERDICTS,
    Context,
    Run,
    Section,
    load_runs,
    measure_identities,
    run_audit,
    write_audit,
)

__all__ = [
    "IDENTITIES_FILE",
    "IDENTITY_LABELS",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "SECTIONS",
    "SUPPORTED",
    "VERDICTS",
    "Context",
    "Run",
    "Section",
    "load_runs",
    "measure_identities",
    "run_audit",
    "write_audit",
]
