"""Posterior summaries as ArviZ ``InferenceData`` (arviz 0.23.x, the release that installs on Python 3.11).

:func:`build_inference_data` is the generic converter every model uses: arrays shaped
``(chain, draw, ...)`` go in, an ``InferenceData`` with the usual groups comes out.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def _arviz():
    """Import arviz without its import-time FutureWarning about the 1.x refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"'{name}' could not be converted to an array ({exc}).") from exc
    if arr.dtype == object:
        raise TypeError(f"'{name}' must be a numeric array, got dtype object.")
    return arr


def _chain_draw_dict(group: Mapping[str, Any] | None, group_name: str) -> dict[str, np.ndarray] | None:
    """Convert a group of (chain, draw, ...) arrays and check they agree on (chain, draw)."""
    if group is None:
        return None
    if not isinstance(group, Mapping):
        raise TypeError(f"{group_name} must be a dict name -> array, got {type(group).__name__}.")
    out: dict[str, np.ndarray] = {}
    shape: tuple[int, int] | None = None
    for name, value in group.items():
        arr = _to_numpy(value, name)
        if arr.ndim < 2:
            raise ValueError(
                f"{group_name}['{name}'] has shape {arr.shape}; arrays must be (chain, draw, ...) — "
                "add a leading chain axis with arr[None] for a single chain."
            )
        if shape is None:
            shape = arr.shape[:2]
        elif arr.shape[:2] != shape:
            raise ValueError(
                f"{group_name}['{name}'] has (chain, draw) = {arr.shape[:2]} but other variables "
                f"have {shape}; all arrays of a group must share the chain and draw axes."
            )
        out[str(name)] = arr
    return out


def build_inference_data(
    posterior: Mapping[str, Any],
    sample_stats: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """An ``arviz.InferenceData`` from dicts of arrays (numpy or torch).

    Parameters
    ----------
    posterior : name -> array (chain, draw, ...).
    sample_stats : name -> array (chain, draw), e.g. ``{"diverging": bool array}``.
    observed_data : name -> array (no chain/draw axes), e.g. ``{"X": (N, D)}``.
    log_likelihood : name -> array (chain, draw, N) of pointwise log-likelihoods (for az.loo / az.waic).
    coords, dims : ArviZ coordinates and dimension names, e.g. ``dims={"means": ["component", "feature"]}``.
    attrs : extra attributes (e.g. the inference method), stored on ``idata.attrs`` and on every group.
    """
    post = _chain_draw_dict(posterior, "posterior")
    if not post:
        raise ValueError("posterior must contain at least one variable (name -> (chain, draw, ...) array).")
    shape = next(iter(post.values())).shape[:2]
    stats = _chain_draw_dict(sample_stats, "sample_stats")
    loglik = _chain_draw_dict(log_likelihood, "log_likelihood")
    for group_name, group in (("sample_stats", stats), ("log_likelihood", loglik)):
        if group:
            other = next(iter(group.values())).shape[:2]
            if other != shape:
                raise ValueError(
                    f"{group_name} has (chain, draw) = {other} but posterior has {shape}; they must match."
                )
    obs = None
    if observed_data is not None:
        if not isinstance(observed_data, Mapping):
            raise TypeError(
                f"observed_data must be a dict name -> array, got {type(observed_data).__name__}."
            )
        obs = {str(k): _to_numpy(v, k) for k, v in observed_data.items()}
    az = _arviz()
    kwargs: dict[str, Any] = {}
    if stats:
        kwargs["sample_stats"] = stats
    if loglik:
        kwargs["log_likelihood"] = loglik
    if obs:
        kwargs["observed_data"] = obs
    idata = az.from_dict(
        posterior=post,
        coords=dict(coords) if coords else None,
        dims=dict(dims) if dims else None,
        attrs=dict(attrs) if attrs else None,
        **kwargs,
    )
    if attrs:  # also on every group, where xarray users look for them
        for group in idata.groups():
            idata[group].attrs.update(dict(attrs))
    return idata


# ---------------------------------------------------------------------------------------------------
# Bayesian GMM fits (NUTS or SVI)
# ---------------------------------------------------------------------------------------------------
_COV_DIMS = {
    "full": ["component", "feature", "feature_bis"],
    "tied": ["feature", "feature_bis"],
    "diag": ["component", "feature"],
    "spherical": ["component"],
}


def pointwise_log_likelihood(
    X: torch.Tensor,
    weights: torch.Tensor,
    means: torch.Tensor,
    precisions: torch.Tensor,
    covariance_type: str,
    max_elements: int = 2**24,
) -> torch.Tensor:
    """``log p(x_n | theta_s)`` (S, N) for S parameter draws, in chunks of draws (memory ~ max_elements)."""
    from .models.gmm_model import mixture_log_prob

    S = weights.shape[0]
    N, D = X.shape
    K = weights.shape[-1]
    step = max(1, max_elements // max(1, N * K * D))
    with torch.no_grad():
        parts = [
            mixture_log_prob(X, weights[s : s + step], means[s : s + step], precisions[s : s + step],
                             covariance_type)
            for s in range(0, S, step)
        ]
    return torch.cat(parts, 0)


def gmm_inference_data(result: Any, X: Any, covariance_type: str | None = None, num_samples: int = 1000,
                       generator: torch.Generator | None = None, frame: Any = None):
    """``InferenceData`` of a Bayesian GMM fit: a :class:`~bayesclust.inference.nuts.NUTSResult` or
    :class:`~bayesclust.inference.svi.SVIResult`.

    Groups: posterior (weights, means, covariances; NUTS: relabelled draws (chain, draw, ...); SVI:
    ``num_samples`` draws of the mean-field guide as one chain, or the single MAP point), sample_stats
    (``diverging``; all False for SVI), observed_data (``X``) and log_likelihood (``X``: pointwise
    ``log p(x_n | theta)`` per draw, for ``az.loo`` / ``az.waic``).

    ``frame`` (a :class:`bayesclust._frame.Frame`): the result was fitted on ``(X - shift) / scale``;
    the draws and log-likelihoods are reported in X's units.
    """
    from .inference.nuts import NUTSResult
    from .inference.svi import SVIResult
    from .models.gaussian import COVARIANCE_TYPES

    if covariance_type is None:
        covariance_type = getattr(result, "covariance_type", None)
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type={covariance_type!r} is not supported; choose one of "
                         f"{list(COVARIANCE_TYPES)}.")
    if isinstance(result, NUTSResult):
        draws = {k: result.samples[k] for k in ("weights", "means", "precisions", "covariances")}
        diverging = result.divergences
        method = "nuts"
        extra = {"n_relabelled": result.n_relabelled, "relabelled_fraction": result.relabelled_fraction}
    elif isinstance(result, SVIResult):
        n = 1 if result.guide_type == "map" else num_samples
        draws = {k: v.unsqueeze(0) for k, v in result.sample_posterior(n, generator).items()}
        diverging = torch.zeros(draws["weights"].shape[:2], dtype=torch.bool)
        method = f"svi-{result.guide_type}"
        extra = {}
    else:
        raise TypeError(f"result must be a NUTSResult or SVIResult, got {type(result).__name__}.")
    ref = draws["means"]
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[1] != ref.shape[-1]:
        raise ValueError(f"X must be (N, D) with D = {ref.shape[-1]} features, got shape {tuple(X.shape)}.")
    Xw, jac = X.to(dtype=ref.dtype, device=ref.device), 0.0
    if frame is not None:  # the log-likelihood in the fit's frame, less the log-Jacobian of the map
        Xw, jac = frame.apply(X.to(ref.device), ref.dtype), X.shape[1] * frame.log_scale
    C, S = ref.shape[:2]
    flat = {k: v.reshape(C * S, *v.shape[2:]) for k, v in draws.items()}
    loglik = pointwise_log_likelihood(Xw, flat["weights"], flat["means"], flat["precisions"], covariance_type)
    loglik = loglik - jac
    if frame is not None:
        from .models.gaussian import affine_draws

        draws = affine_draws({k: v.double() for k, v in draws.items()}, frame.shift, frame.scale)
        X = X.double()
    else:
        X = X.to(dtype=ref.dtype, device=ref.device)
    return build_inference_data(
        {k: draws[k] for k in ("weights", "means", "covariances")},
        sample_stats={"diverging": diverging},
        observed_data={"X": X},
        log_likelihood={"X": loglik.reshape(C, S, -1)},
        dims={
            "weights": ["component"],
            "means": ["component", "feature"],
            "covariances": _COV_DIMS[covariance_type],
            "X": ["obs_id", "feature"],
        },
        attrs={"inference": method, "covariance_type": covariance_type, **extra},
    )


# ---------------------------------------------------------------------------- summaries of kept draws
def pad_draws(
    weights: list[torch.Tensor], means: list[torch.Tensor], mean: torch.Tensor, scale: torch.Tensor
):
    """Per-draw weights (S, Kmax) and means (S, Kmax, D), sorted by weight, NaN-padded, original units."""
    d = mean.shape[0]
    if not weights:
        return np.zeros((0, 1)), np.zeros((0, 1, d))
    kmax = max(int(w.shape[0]) for w in weights)
    W = np.full((len(weights), kmax), np.nan)
    M = np.full((len(weights), kmax, d), np.nan)
    for s, (w, m) in enumerate(zip(weights, means)):  # loop over stored draws (summaries only)
        order = torch.argsort(w, descending=True)
        W[s, : w.shape[0]] = w[order].double().numpy()
        M[s, : w.shape[0]] = (m[order].double() * scale.double() + mean.double()).numpy()
    return W, M


def aligned_assignment_probs(draws: list[torch.Tensor], labels: torch.Tensor, k: int) -> np.ndarray:
    """P(point i in point-estimate cluster c): each draw's clusters are mapped to the point-estimate
    cluster they overlap most, then the one-hot assignments are averaged over draws."""
    n = labels.shape[0]
    if not draws:
        return np.eye(k)[labels.cpu().numpy()]
    acc = torch.zeros(n, k, dtype=torch.float64)
    lab = labels.cpu()
    for z in draws:  # loop over stored draws; each step is O(N) tensor work
        z = z.long().cpu()
        kz = int(z.max()) + 1
        cont = torch.bincount(z * k + lab, minlength=kz * k).view(kz, k)
        mapped = cont.argmax(1)[z]
        acc[torch.arange(n), mapped] += 1.0
    return (acc / len(draws)).numpy()


def coclustering_matrix(draws: list[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    n = labels.shape[0]
    if n > 5000:
        raise ValueError(f"coclustering=True needs an (N, N) matrix; N={n} > 5000 is too large.")
    if not draws:
        z = labels.cpu()
        return (z[:, None] == z[None, :]).double().numpy()
    acc = torch.zeros(n, n, dtype=torch.float64)
    for z in draws:
        z = z.cpu()
        acc += (z[:, None] == z[None, :]).double()
    return (acc / len(draws)).numpy()


# ---------------------------------------------------------------------------- counting rule (issue 15)
def check_min_cluster_size(value: Any) -> int | float:
    """``min_cluster_size``: an int >= 1 (points) or a float in (0, 1) (a share of N); else a clear error."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            "min_cluster_size must be an int >= 1 or a float in (0, 1), got "
            f"{type(value).__name__} ({value!r})."
        )
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"min_cluster_size must be an int >= 1 or a float in (0, 1), got {value}.")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"min_cluster_size must be an int >= 1 or a float in (0, 1) (a share of N), got {value!r}."
        )
    return float(value)


def size_threshold(min_cluster_size: int | float, n: float) -> int:
    """Points a cluster needs to be counted: the int itself, or ceil(share * N), at least 1."""
    if isinstance(min_cluster_size, float):
        return max(1, int(np.ceil(min_cluster_size * n - 1e-9)))
    return max(1, int(min_cluster_size))


def counted_k(sizes: list[np.ndarray], threshold: int) -> np.ndarray:
    """Per draw, the number of clusters holding at least ``threshold`` points; ``sizes`` one (K_s,)
    array of cluster sizes per draw."""
    return np.array([int((np.asarray(s) >= threshold - 1e-9).sum()) for s in sizes], dtype=np.int64)


def k_distribution(ks: np.ndarray) -> dict[int, float]:
    """{K: share of the draws} of per-draw cluster counts (S,)."""
    vals, counts = np.unique(np.asarray(ks), return_counts=True)
    return {int(k): float(c / counts.sum()) for k, c in zip(vals, counts)}
