"""The mixture-family interface: what a component distribution gives the inference routes.

Every route works on *sufficient statistics* in one layout: for a group of points (a component,
a cluster, a sub-cluster) the sums of ``[phi(x), 1]`` over its points (with responsibilities as
weights in EM), a row of ``G`` (M, Q + 1) whose last column is the (weighted) count. A family says
what ``phi`` is and what to do with such rows; it never loops over data (the routes in
``bayesclust/inference/`` do, chunk by chunk, through ``inference/streaming.py``).

Two interfaces, one per kind of route:

- :class:`EMFamily` (``inference/em.py``): component log densities as one matmul
  ``log w_k + log p(x | theta_k) = phi(x) . A[:, k] + c[k]``, the M-step (ML or MAP) from ``G`` and
  the log prior of the parameters.
- :class:`ConjugateFamily` (``inference/splitmerge.py``): the log marginal likelihood of a group's
  statistics with the parameters integrated out, a posterior draw of the parameters of each group
  as log-density coefficients over ``[phi(x), 1]``, and the groups' moments (for proposals).

A new family (a Student-t, a Poisson, ...) is one object implementing these methods; EM and the
split/merge sampler then run it with no change. ``models/gaussian.GaussianFamily`` implements both
for Gaussians; ``tests/test_family_seam.py`` runs a second family through both routes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class EMFamily(Protocol):
    """A mixture family for EM. ``params`` is the family's own parameter object (weights included)."""

    def feature_dim(self, d: int) -> int:
        """Q, the width of ``phi(x)`` for D features."""
        ...

    def feature_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """phi(X) (n, Q), written into ``out`` when given."""
        ...

    def log_prob_coefficients(self, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (Q, K), c (K,)) with ``log w_k + log p(x | theta_k) = phi(x) . A[:, k] + c[k]``."""
        ...

    def m_step(self, G: torch.Tensor, previous: Any) -> Any:
        """New parameters from statistics G (K, Q + 1); ``previous`` for components with no mass."""
        ...

    def log_prior(self, params: Any) -> float:
        """log p(params) (0 for maximum likelihood)."""
        ...


@runtime_checkable
class ConjugateFamily(Protocol):
    """A family with a conjugate prior, for the collapsed split/merge sampler."""

    @property
    def dim(self) -> int:
        """D, the number of features."""
        ...

    def statistics_map(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[phi(X), 1] (n, Q + 1): the per-point terms whose sums are a group's statistics."""
        ...

    def log_marginal_likelihood(self, G: torch.Tensor) -> torch.Tensor:
        """log p(X_m) with the parameters integrated out, for each row of G (M, Q + 1) -> (M,)."""
        ...

    def sample_coefficients(
        self, G: torch.Tensor, log_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A posterior draw of each group's parameters given G (M, Q + 1): the coefficients
        A (Q + 1, M) with ``[phi(x), 1] . A[:, m] = log_weights[m] + log p(x | theta_m)``, and the
        drawn means (M, D) (kept as posterior draws)."""
        ...

    def moments(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Counts (M,), means (M, D) and covariances (M, D, D) of the points behind each row of G."""
        ...
