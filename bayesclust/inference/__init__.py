"""HOW models are fitted: the engine and its steps; the only place that loops over data."""

from .engine import ConvergenceWarning, Engine, FitResult, NonFiniteError, Step

__all__ = ["ConvergenceWarning", "Engine", "FitResult", "NonFiniteError", "Step"]
