"""bayesclust: probabilistic-programming Bayesian clustering.

Public API re-exports only; see the README for a tour.
"""

from . import datasets, losses, metrics, plotting
from ._device import resolve_device
from ._validation import NotFittedError
from .estimators import DPGMM, DTIGMM, DTIKMeans, EntropyClustering, GaussianMixture
from .inference.engine import ConvergenceWarning, Engine, NonFiniteError, Step

__version__ = "0.1.0"

__all__ = [
    "DPGMM",
    "DTIGMM",
    "ConvergenceWarning",
    "DTIKMeans",
    "Engine",
    "EntropyClustering",
    "GaussianMixture",
    "NonFiniteError",
    "NotFittedError",
    "Step",
    "datasets",
    "losses",
    "metrics",
    "plotting",
    "resolve_device",
]
