"""bayesclust: probabilistic-programming Bayesian clustering.

Public API re-exports only; see the README for a tour.
"""

from . import metrics
from ._device import resolve_device
from ._validation import NotFittedError
from .inference.engine import ConvergenceWarning, Engine, NonFiniteError, Step
from .models.gmm import GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "Engine",
    "GaussianMixture",
    "NonFiniteError",
    "NotFittedError",
    "Step",
    "metrics",
    "resolve_device",
]
