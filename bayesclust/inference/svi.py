"""Stochastic variational inference for the Bayesian GMM (Pyro ``TraceEnum_ELBO``, assignments enumerated).

``fit_svi`` builds the guide (``"map"``: ``AutoDelta``, a point mass at the constrained value, so the
optimum is the joint MAP of :mod:`bayesclust.models.gmm_model`, the same as EM-MAP; ``"meanfield"``:
``AutoNormal``, independent Normals in the unconstrained space) and hands one :class:`Step` (an epoch
over mini-batches) to :meth:`Engine.run`. ``svi_labels`` gives MAP labels with ``infer_discrete``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, infer_discrete
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from torch.distributions import biject_to

from .._validation import check_option, check_positive_int, check_scalar
from ..models.gmm_model import GMMPrior, init_values, make_gmm_model, precisions_to_covariances
from .engine import Engine, FitResult, Step
from .neural import optimizer_step

GUIDES = ("map", "meanfield")
_GLOBAL_SITES = ("weights", "means", "precisions")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` intra-op threads (tiny Pyro graphs run fastest on one; None = unchanged)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class SVIResult:
    """Outcome of :func:`fit_svi`.

    weights (K,), means (K, D), covariances (scikit-learn shape), precisions (same shape): the MAP
    point (``guide="map"``) or the posterior mean under the mean-field guide (Monte Carlo, see
    ``num_mean_samples``). ``history`` is the engine's history (negative ELBO per data point, one
    entry per epoch); ``fit`` the full :class:`FitResult`.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    precisions: torch.Tensor
    history: list[float]
    guide: Any
    guide_type: str
    covariance_type: str
    model: Any
    fit: FitResult = field(repr=False, default_factory=FitResult)

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[-1])

    def sample_posterior(
        self, num_samples: int = 1000, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Draws (num_samples, ...) of weights, means, precisions and covariances from the guide.

        Mean-field: independent Normal draws in the unconstrained space, mapped through each site's
        bijection. MAP: the point repeated (a Delta posterior).
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        if self.guide_type == "map":
            out = {
                "weights": self.weights,
                "means": self.means,
                "precisions": self.precisions,
            }
            out = {k: v.unsqueeze(0).expand(num_samples, *v.shape).clone() for k, v in out.items()}
        else:
            out = _sample_autonormal(self.guide, num_samples, generator)
        out["covariances"] = precisions_to_covariances(out["precisions"], self.covariance_type)
        return out


def _sample_autonormal(guide: AutoNormal, num_samples: int, generator: torch.Generator | None):
    out = {}
    with torch.no_grad():
        for name in _GLOBAL_SITES:
            loc, scale = guide._get_loc_and_scale(name)
            eps = torch.randn(
                (num_samples, *loc.shape), generator=generator, dtype=loc.dtype, device="cpu"
            ).to(loc.device)
            support = guide.prototype_trace.nodes[name]["fn"].support
            out[name] = biject_to(support)(loc + scale * eps).detach()
    return out


def _point(guide, guide_type: str, X: torch.Tensor, num_mean_samples: int, generator) -> dict:
    if guide_type == "map":
        with torch.no_grad():
            med = guide.median(X)
        return {k: med[k].detach() for k in _GLOBAL_SITES}
    draws = _sample_autonormal(guide, num_mean_samples, generator)
    return {k: v.mean(0) for k, v in draws.items()}


def _check_svi_args(X, K, engine, guide, lr, batch_size, num_particles, init_scale, lr_decay, num_threads):
    """Validated (K, lr, batch_size, num_threads) of :func:`fit_svi`."""
    check_option(guide, "guide", GUIDES)
    K = check_positive_int(K, "K")
    lr = check_scalar(lr, "lr", low=0, low_inclusive=False)
    check_positive_int(num_particles, "num_particles")
    check_scalar(init_scale, "init_scale", low=0, low_inclusive=False)
    check_scalar(lr_decay, "lr_decay", low=0, high=1, low_inclusive=False)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be a bayesclust Engine, got {type(engine).__name__}.")
    if engine.maximize:
        raise ValueError("fit_svi minimises the negative ELBO; build the engine with maximize=False.")
    if num_threads == "auto":
        shape = torch.as_tensor(X).shape
        num_threads = 1 if shape[0] * K * shape[1] < 2**20 else None
    elif num_threads is not None:
        num_threads = check_positive_int(num_threads, "num_threads")
    return K, lr, batch_size, num_threads


def fit_svi(
    X: torch.Tensor,
    K: int,
    covariance_type: str,
    prior: GMMPrior,
    init: dict,
    engine: Engine,
    guide: str = "map",
    lr: float = 0.05,
    batch_size: int | None = None,
    num_particles: int = 1,
    init_scale: float = 0.01,
    num_mean_samples: int = 1000,
    num_threads: int | str | None = "auto",
    lr_decay: float = 1.0,
) -> SVIResult:
    """Fit the Bayesian GMM by SVI, from ``init`` = {weights (K,), means (K, D), covariances}.

    ``engine`` runs the epochs (``Engine(maximize=False, ...)``: the objective is a loss; its
    ``max_iter``/``tol``/callbacks/checkpoints apply, tol on the per-point negative ELBO).
    ``batch_size`` sub-samples the data plate (mini-batch SVI, scaled ELBO); ``num_particles``
    ELBO particles; ``init_scale`` the initial unconstrained std of the mean-field guide;
    ``num_threads`` torch threads while fitting (None = unchanged; ``"auto"``: one thread when
    N * K * D < 2**20, where the graph is tiny and extra threads only add overhead on a busy CPU);
    ``lr_decay`` multiplies the learning rate after every epoch (< 1 damps Adam's jitter around the
    optimum, which is of the order of ``lr`` in the unconstrained space when ``tol=0``).
    The Pyro param store is cleared at the start (guides are fitted one at a time).
    """
    K, lr, batch_size, num_threads = _check_svi_args(
        X, K, engine, guide, lr, batch_size, num_particles, init_scale, lr_decay, num_threads
    )
    X = engine.to(torch.as_tensor(X))
    N = X.shape[0]
    if N < K:
        raise ValueError(f"n_samples={N} should be >= K={K}.")
    model = make_gmm_model(K, covariance_type, prior)
    values = init_values(init, covariance_type, X, K)
    pyro.clear_param_store()
    blocked = poutine.block(model, expose=list(_GLOBAL_SITES))
    if guide == "map":
        g = AutoDelta(blocked, init_loc_fn=init_to_value(values=values))
    else:
        g = AutoNormal(blocked, init_loc_fn=init_to_value(values=values), init_scale=init_scale)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=num_particles)
    with torch_threads(num_threads):
        g(X)  # builds the guide's parameters
        optimizer = torch.optim.Adam(g.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
        state: dict[str, Any] = {"guide": g, "optimizer": optimizer, "scheduler": scheduler}

        def svi_epoch(state: dict[str, Any], iteration: int) -> float:
            total, n_batches = 0.0, 0
            for idx in engine.batches(N, batch_size, shuffle=batch_size is not None):
                total += optimizer_step(optimizer, elbo.differentiable_loss(model, g, X, subsample=idx))
                n_batches += 1
            scheduler.step()
            return total / n_batches / N

        fit = engine.run([Step("svi", svi_epoch)], state)
        point = _point(g, guide, X, num_mean_samples, engine.generator)
    return SVIResult(
        weights=point["weights"],
        means=point["means"],
        precisions=point["precisions"],
        covariances=precisions_to_covariances(point["precisions"], covariance_type),
        history=list(fit.history),
        guide=g,
        guide_type=guide,
        covariance_type=covariance_type,
        model=model,
        fit=fit,
    )


def svi_labels(result: SVIResult, X: torch.Tensor, temperature: int = 0) -> torch.Tensor:
    """Labels (N,) from ``infer_discrete`` on the model conditioned on ``result``'s point estimate.

    ``temperature=0``: MAP assignments (argmax of the responsibilities); ``1``: posterior samples.
    """
    check_option(temperature, "temperature", (0, 1))
    point = {"weights": result.weights, "means": result.means, "precisions": result.precisions}
    X = torch.as_tensor(X).to(dtype=result.means.dtype, device=result.means.device)
    conditioned = poutine.condition(result.model, data=point)
    decoder = infer_discrete(conditioned, temperature=temperature, first_available_dim=-2)
    with torch.no_grad():
        trace = poutine.trace(decoder).get_trace(X)
    return trace.nodes["assignment"]["value"]
