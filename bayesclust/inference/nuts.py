"""NUTS for the Bayesian GMM (small data), with the assignments enumerated out and label switching resolved.

Chains run one after another (one seeded Pyro ``MCMC`` per chain: no multiprocessing). Each draw is
then relabelled to a reference (the ``init`` means, e.g. the EM-MAP solution) by Hungarian matching on
squared distances between the draw's means and the reference means; how many draws needed a
permutation is reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from scipy.optimize import linear_sum_assignment

from .._validation import check_positive_int, check_scalar
from ..models.gaussian import GaussianFamily, GMMParams
from ..models.gmm_model import (
    GMMPrior,
    init_values,
    make_gmm_model,
    precisions_to_covariances,
)
from .em import e_step
from .streaming import Features
from .svi import torch_threads

_PER_COMPONENT = {"weights", "means"}  # + "precisions"/"covariances" unless tied


@dataclass
class NUTSResult:
    """Outcome of :func:`fit_nuts`.

    samples : name -> (chains, draws, ...) for "weights", "means", "precisions", "covariances",
        relabelled to the reference.
    divergences : (chains, draws) bool.
    permutations : (chains, draws, K) int; ``samples[..., k]`` = raw draw component ``permutations[..., k]``.
    n_relabelled, relabelled_fraction : draws whose labels were permuted by the matching.
    weights, means, covariances : posterior means of the relabelled draws.
    """

    samples: dict[str, torch.Tensor]
    divergences: torch.Tensor
    permutations: torch.Tensor
    n_relabelled: int
    relabelled_fraction: float
    covariance_type: str
    reference_means: torch.Tensor
    accept_prob: list[float] = field(default_factory=list)

    @property
    def num_chains(self) -> int:
        return int(self.divergences.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.divergences.shape[1])

    @property
    def weights(self) -> torch.Tensor:
        return self.samples["weights"].mean((0, 1))

    @property
    def means(self) -> torch.Tensor:
        return self.samples["means"].mean((0, 1))

    @property
    def covariances(self) -> torch.Tensor:
        return self.samples["covariances"].mean((0, 1))


def match_to_reference(means: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> np.ndarray:
    """Permutations (S, K) that relabel each draw's means (S, K, D) to ``reference`` (K, D).

    ``perm[s, k]`` is the draw component assigned to reference component k (Hungarian matching on
    squared Euclidean distances, ``scipy.optimize.linear_sum_assignment``).
    """
    m = np.asarray(torch.as_tensor(means).detach().cpu(), dtype=np.float64)
    ref = np.asarray(torch.as_tensor(reference).detach().cpu(), dtype=np.float64)
    if m.ndim != 3 or ref.ndim != 2 or m.shape[1:] != ref.shape:
        raise ValueError(
            f"means must be (S, K, D) and reference (K, D) with matching K, D; got {m.shape} and {ref.shape}."
        )
    cost = ((m[:, :, None, :] - ref[None, None, :, :]) ** 2).sum(-1)  # (S, K_draw, K_ref)
    perms = np.empty(m.shape[:2], dtype=np.int64)
    for s in range(m.shape[0]):
        rows, cols = linear_sum_assignment(cost[s])
        perms[s, cols] = rows
    return perms


def relabel_samples(
    samples: dict[str, torch.Tensor], reference: torch.Tensor, covariance_type: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Relabel draws (chains, draws, K, ...) to ``reference`` means (K, D); returns (samples, perms).

    Per-component sites ("weights", "means", and "precisions"/"covariances" unless tied) are permuted
    along their component axis; other sites are copied.
    """
    if "means" not in samples:
        raise ValueError("samples must contain 'means' (chains, draws, K, D) to relabel.")
    means = samples["means"]
    C, S, K = means.shape[:3]
    perms = torch.as_tensor(match_to_reference(means.reshape(C * S, K, -1), reference)).reshape(C, S, K)
    per_component = set(_PER_COMPONENT)
    if covariance_type != "tied":
        per_component |= {"precisions", "covariances"}
    out = {}
    for name, value in samples.items():
        if name in per_component:
            idx = perms.to(value.device).reshape(C, S, K, *([1] * (value.ndim - 3))).expand(value.shape)
            out[name] = torch.gather(value, 2, idx)
        else:
            out[name] = value.clone()
    return out, perms


def _sampler_diagnostics(mcmc: MCMC) -> dict:
    """The kernel's per-chain diagnostics (divergent draw indices, acceptance rate) of a 1-chain run.

    ``MCMC.diagnostics()`` also computes R-hat / ESS, which needs >= 4 draws; read the sampler's part
    directly where Pyro keeps it.
    """
    per_chain = getattr(mcmc, "_diagnostics", None)
    if per_chain:
        return dict(per_chain[0])
    return {k: v.get("chain 0") for k, v in mcmc.diagnostics().items() if isinstance(v, dict)}


def _run_chain(
    model, X: torch.Tensor, kernel_kw: dict, num_samples: int, warmup_steps: int, progress_bar: bool
) -> tuple[dict[str, torch.Tensor], list[int], float | None]:
    """One NUTS chain: its draws, the indices of divergent draws and the acceptance rate."""
    kernel = NUTS(model, max_plate_nesting=1, ignore_jit_warnings=True, **kernel_kw)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                disable_progbar=not progress_bar)
    with warnings.catch_warnings():  # torch.jit.trace's deprecation notice, when jit_compile
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        mcmc.run(X)
    diag = _sampler_diagnostics(mcmc)
    samples = {name: value.detach() for name, value in mcmc.get_samples().items()}
    return samples, list(diag.get("divergences", [])), diag.get("acceptance rate")


def fit_nuts(
    X: torch.Tensor,
    K: int,
    covariance_type: str,
    prior: GMMPrior,
    init: dict,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    random_state: int | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    num_threads: int | None = 1,
    progress_bar: bool = False,
    reference_means: torch.Tensor | None = None,
) -> NUTSResult:
    """Sample the Bayesian GMM posterior with NUTS, starting every chain at ``init``.

    ``init`` = {weights (K,), means (K, D), covariances (scikit-learn shape)}; its means are the
    relabelling reference unless ``reference_means`` (K, D) is given. Chain c is seeded with
    ``random_state + c``. ``num_threads`` torch threads while sampling (1 is fastest for these tiny
    graphs; None = unchanged). ``jit_compile`` traces the potential (faster; tested on the
    full covariance type). Returns a :class:`NUTSResult`.
    """
    K = check_positive_int(K, "K")
    num_samples = check_positive_int(num_samples, "num_samples")
    warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
    num_chains = check_positive_int(num_chains, "num_chains")
    kernel_kw = {
        "max_tree_depth": check_positive_int(max_tree_depth, "max_tree_depth"),
        "target_accept_prob": check_scalar(
            target_accept, "target_accept", low=0, high=1, low_inclusive=False, high_inclusive=False
        ),
        "jit_compile": jit_compile,
    }
    if num_threads is not None:
        num_threads = check_positive_int(num_threads, "num_threads")
    X = torch.as_tensor(X)
    if not X.is_floating_point():
        X = X.double()
    if X.ndim != 2 or X.shape[0] < K:
        raise ValueError(f"X must be (N, D) with N >= K={K}, got shape {tuple(X.shape)}.")
    model = make_gmm_model(K, covariance_type, prior)
    values = init_values(init, covariance_type, X, K)
    reference = values["means"] if reference_means is None else torch.as_tensor(reference_means).to(X)
    if reference.shape != values["means"].shape:
        raise ValueError(
            f"reference_means must be (K, D) = {tuple(values['means'].shape)}, got {tuple(reference.shape)}."
        )
    kernel_kw["init_strategy"] = init_to_value(values=values)
    draws: dict[str, list[torch.Tensor]] = {}
    divergences = torch.zeros(num_chains, num_samples, dtype=torch.bool)
    accept: list[float] = []
    with torch_threads(num_threads):
        for chain in range(num_chains):
            if random_state is not None:
                pyro.set_rng_seed(int(random_state) + chain)
            samples, div_idx, rate = _run_chain(model, X, kernel_kw, num_samples, warmup_steps, progress_bar)
            for name, value in samples.items():
                draws.setdefault(name, []).append(value)
            if div_idx:
                divergences[chain, torch.as_tensor(div_idx, dtype=torch.long)] = True
            if rate is not None:
                accept.append(float(rate))
    return _relabelled_result(draws, divergences, accept, reference, covariance_type)


def _relabelled_result(
    draws: dict[str, list[torch.Tensor]],
    divergences: torch.Tensor,
    accept: list[float],
    reference: torch.Tensor,
    covariance_type: str,
) -> NUTSResult:
    """Stack the chains' draws (chains, draws, ...), relabel them to ``reference``, wrap them up."""
    samples = {name: torch.stack(v) for name, v in draws.items()}
    samples["covariances"] = precisions_to_covariances(samples["precisions"], covariance_type)
    samples, perms = relabel_samples(samples, reference, covariance_type)
    permuted = (perms != torch.arange(reference.shape[0])).any(-1)
    n_relabelled = int(permuted.sum())
    return NUTSResult(
        samples=samples,
        divergences=divergences,
        permutations=perms,
        n_relabelled=n_relabelled,
        relabelled_fraction=n_relabelled / permuted.numel(),
        covariance_type=covariance_type,
        reference_means=reference,
        accept_prob=accept,
    )


def draw_log_likelihoods(
    family: GaussianFamily,
    feats: Features,
    weights: torch.Tensor,
    means: torch.Tensor,
    covariances: torch.Tensor,
) -> torch.Tensor:
    """Total log-likelihood of the data behind ``feats`` at every draw (chains, draws); the draws'
    weights (C, S, K), means (C, S, K, D) and covariances (C, S, ...) in ``family``'s layout."""
    c, s = weights.shape[:2]
    out = torch.zeros(c, s, dtype=torch.float64)
    dt = feats.X.dtype
    for i in range(c):  # loop over kept draws; each is one chunked pass over the (small) data
        for t in range(s):
            params = GMMParams(weights[i, t].to(dt), means[i, t].to(dt), covariances[i, t].to(dt))
            A, coef = family.log_prob_coefficients(params)
            out[i, t] = e_step(feats, A, coef, accumulate=False)[0]
    return out


def max_split_rhat(samples: dict[str, torch.Tensor], names: tuple[str, ...]) -> float:
    """The largest split R-hat (Gelman-Rubin) over every entry of the named sites (chains, draws, ...)."""
    from pyro.ops.stats import split_gelman_rubin

    return max(float(split_gelman_rubin(samples[n].double(), chain_dim=0, sample_dim=1).max()) for n in names)
