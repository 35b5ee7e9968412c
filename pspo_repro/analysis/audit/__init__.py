"""The claims audit: each claim about gradients and trust regions, tested on a study's runs, with a verdict.

``results/<study>/audit.md`` (and its PNG figures) is written from the study's run folders (probes,
validation, training logs, evaluation summaries) and from ``identities.json``, the exact identities
measured on real training batches of the study's own runs (:mod:`pspo_repro.analysis.identities`, computed once and
kept beside the audit). Every number in it comes from those files; every verdict is decided by the rule
written in the section's code and printed beside it. A section whose runs are absent says which are
missing. Regenerating from the same files gives the same ``audit.md``.

One module per claim (:mod:`pspo_repro.analysis.audit.claims`): its texts, the numbers it gathers, its rule
as a pure function of those numbers, its table and figure. Shared: the run folders (:mod:`.runs`), the
section record and verdicts (:mod:`.section`), statistics (:mod:`.stats`) and number formats
(:mod:`.formatting`), the identity measurements (:mod:`.measurement`), the document (:mod:`.document`).

Verdicts: ``supported``, ``not supported``, ``inconclusive at this scale``.
"""

from pspo_repro.analysis.audit.document import SECTIONS, render, run_audit, write_audit
from pspo_repro.analysis.audit.measurement import IDENTITIES_FILE, IDENTITY_LABELS, measure_identities
from pspo_repro.analysis.audit.runs import Run, load_runs
from pspo_repro.analysis.audit.section import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    VERDICTS,
    Context,
    Section,
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
    "render",
    "run_audit",
    "write_audit",
]
