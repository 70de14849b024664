"""From probabilities to decisions with guarantees: conformal prediction sets (:mod:`.sets`) and answering only
where the error among answered questions stays below a bound with high probability (:mod:`.abstention`)."""

from .abstention import Abstention, calibrate_abstention
from .record import CONFORMAL_FILE, stored_decisions
from .sets import ConformalSets, SetMethod, calibrate_sets

__all__ = [
    "CONFORMAL_FILE",
    "Abstention",
    "ConformalSets",
    "SetMethod",
    "calibrate_abstention",
    "calibrate_sets",
    "stored_decisions",
]
