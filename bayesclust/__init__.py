"""bayesclust: probabilistic-programming Bayesian clustering.

Public API re-exports only; see the README for a tour.
"""

from . import datasets, losses, metrics, plotting, uncertainty
from ._device import resolve_device
from ._validation import NotFittedError
from .compare import Comparison, compare
from .estimators import DPGMM, DTIGMM, ContrastiveClustering, DTIKMeans, EntropyClustering, GaussianMixture
from .inference.engine import ConvergenceWarning, Engine, NonFiniteError, Step

__version__ = "0.1.0"

__all__ = [
    "DPGMM",
    "DTIGMM",
    "Comparison",
    "ConvergenceWarning",
    "DTIKMeans",
    "Engine",
    "EntropyClustering",
    "ContrastiveClustering",
    "GaussianMixture",
    "NonFiniteError",
    "NotFittedError",
    "Step",
    "compare",
    "datasets",
    "losses",
    "metrics",
    "plotting",
    "resolve_device",
    "uncertainty",
]
