"""An attack evaluation's cost and failure record in one hook: the attack run on the model wrapped in
:class:`~robustbench_rpc.attacks.indicators.PathRecorder` (the counter of :mod:`accounting` that also keeps each
sample's path), so the run stores forwards and backwards per sample and the indicators of attack failure
(:mod:`indicators`) without the attack knowing. Apart from :mod:`accounting`, which :mod:`indicators` builds on."""
from __future__ import annotations

from .accounting import QueryCounts
from .indicators import PathRecorder, Threat, compact_traces, indicator_values


#: the key under which an attack unit's per-sample counts travel with its rows to the harness (never stored as
#: a row column: the harness writes them to the run's meta, ``queries/<model_key>/<eval_key>/<unit>``)
QUERIES_KEY = "_queries"


class CountQueries:
    """An attack run on the model wrapped in a ``QueryCounter`` (a ``PathRecorder``: also each sample's path for
    the failure indicators); ``counts`` after each call. Every other attribute reads through to the attack it
    wraps (eps, norm, space, clip, name, patch budget...)."""

    def __init__(self, attack, query_budget: int | None = None):
        self._attack = attack
        self.query_budget = query_budget
        self.counts: QueryCounts | None = None
        self.recorder = None

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_attack"], name)

    def __call__(self, model, x, y):
        self.recorder = PathRecorder(model, x, y, self.query_budget, Threat.of(self._attack, model))
        out = self._attack(self.recorder, x, y)
        self.counts = self.recorder.counts()
        return out

    def stored(self, clean_correct=None, adv_correct=None) -> dict:
        """The counts as the run stores them (lists, in the order of the unit's samples), and, given the scored
        outcomes, each sample's failure-indicator values (``indicators.indicator_values``) and the margin path
        of each unbroken sample (``indicators.compact_traces``)."""
        c = self.counts
        if c is None:
            return {}
        out = {"forwards": c.forwards.tolist(), "backwards": c.backwards.tolist(), "ambiguous": c.ambiguous}
        if clean_correct is not None and adv_correct is not None:
            fooled = getattr(self._attack, "surrogate_fooled", None)  # a transfer attack's surrogate verdicts
            out["indicators"] = indicator_values(self.recorder, clean_correct.tolist(), adv_correct.tolist(),
                                                 None if fooled is None else fooled.tolist(),
                                                 universal=bool(getattr(self._attack, "universal", False)))
            out["traces"] = compact_traces(self.recorder, (clean_correct & adv_correct).tolist())
        return out
