"""How sure is a fitted clustering? Functions that work on any fitted estimator (or on plain arrays).

- :func:`assignment_entropy`, :func:`least_sure`: per-point entropy of the assignment probabilities.
- :func:`posterior_k`, :func:`coclustering`, :func:`psm_point_estimate`, :func:`credible_intervals`:
  the DPGMM posterior over K, the co-clustering (similarity) matrix and its summaries.
- :func:`arviz_summary`, :func:`to_inference_data`: ArviZ views where a posterior exists.
- :func:`posterior_predictive`, :func:`ppc_pvalues`: posterior predictive checks of NUTS / SVI mixtures.
- :func:`linear_margins`: pairwise decision boundaries and margins of a linear softmax clustering.
- :func:`ensemble_disagreement`: refits across seeds (discriminative heads) and measures disagreement.
- :func:`calibration`: reliability-diagram data and expected calibration error after Hungarian matching.
- :func:`summarize`: everything that applies to one model, as plain Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validation import check_labels
from .metrics import adjusted_rand_index, hungarian_mapping

__all__ = [
    "arviz_summary",
    "assignment_entropy",
    "calibration",
    "coclustering",
    "coclustering_from_draws",
    "credible_intervals",
    "ensemble_disagreement",
    "expected_calibration_error",
    "labelling_disagreement",
    "least_sure",
    "linear_margins",
    "posterior_k",
    "posterior_predictive",
    "ppc_pvalues",
    "psm_point_estimate",
    "summarize",
    "to_inference_data",
]


def _proba(model_or_proba: Any, X: Any = None) -> np.ndarray:
    """(N, K) assignment probabilities from a fitted estimator and X, or checked from an array."""
    if hasattr(model_or_proba, "predict_proba"):
        if X is None:
            raise ValueError("X is required when an estimator is given (its predict_proba(X) is used).")
        P = np.asarray(model_or_proba.predict_proba(X), dtype=np.float64)
    elif hasattr(model_or_proba, "predict"):
        if X is None:
            raise ValueError("X is required when an estimator is given.")
        labels = np.asarray(model_or_proba.predict(X))
        P = np.eye(int(labels.max()) + 1)[labels]
    else:
        try:
            P = np.asarray(model_or_proba, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"expected a fitted estimator or an (N, K) probability array ({exc}).") from exc
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0:
        raise ValueError(f"assignment probabilities must be a non-empty (N, K) array, got shape {P.shape}.")
    if not np.all(np.isfinite(P)) or P.min() < -1e-9 or not np.allclose(P.sum(1), 1.0, atol=1e-4):
        raise ValueError("assignment probabilities must be finite, non-negative and sum to 1 per row.")
    return np.clip(P, 0.0, 1.0)


def assignment_entropy(model_or_proba: Any, X: Any = None, *, normalize: bool = False) -> np.ndarray:
    """Entropy (nats) of each point's assignment probabilities, (N,).

    ``model_or_proba`` is a fitted estimator (then ``X`` (N, ...) is required) or an (N, K) array.
    ``normalize=True`` divides by ``log K`` so values lie in [0, 1].
    """
    P = _proba(model_or_proba, X)
    with np.errstate(divide="ignore", invalid="ignore"):
        H = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
    if normalize:
        H = H / np.log(P.shape[1]) if P.shape[1] > 1 else np.zeros_like(H)
    return H


def least_sure(model_or_proba: Any, X: Any = None, n: int = 10) -> np.ndarray:
    """Indices (n,) of the points with the highest assignment entropy, most uncertain first."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    H = assignment_entropy(model_or_proba, X)
    return np.argsort(-H, kind="stable")[: int(n)]


# ---------------------------------------------------------------------------------- DPGMM posterior
def _need(model: Any, attrs: Sequence[str], what: str) -> None:
    missing = [a for a in attrs if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{what} needs a fitted DPGMM-like model with {list(attrs)}; "
            f"{type(model).__name__} lacks {missing} (fit it first, or use a DPGMM)."
        )


def posterior_k(model: Any) -> dict[str, Any]:
    """``{"posterior_k": {K: prob}, "k_trace": (n_sweeps,), "burn_in": int, "map_k": int}`` of a DPGMM."""
    _need(model, ["posterior_k_", "k_trace_"], "posterior_k")
    trace = np.asarray(model.k_trace_)
    n_kept = int(getattr(model, "draws_weights_", np.zeros((0,))).shape[0])
    pk = {int(k): float(v) for k, v in model.posterior_k_.items()}
    return {
        "posterior_k": pk,
        "k_trace": trace,
        "burn_in": int(max(0, len(trace) - n_kept)),
        "map_k": max(pk, key=pk.get),
    }


def coclustering_from_draws(draws: Any) -> np.ndarray:
    """Posterior similarity matrix (N, N) from label draws (S, N): fraction of draws sharing a cluster."""
    Z = np.asarray(draws)
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.dtype.kind not in "iu":
        raise ValueError(
            f"draws must be a non-empty integer (S, N) array of labels, got shape {Z.shape} "
            f"and dtype {Z.dtype}."
        )
    onehot = (Z[:, :, None] == np.unique(Z)[None, None, :]).astype(np.float64)  # (S, N, L)
    return np.einsum("snl,sml->nm", onehot, onehot) / Z.shape[0]


def coclustering(model: Any) -> np.ndarray:
    """The co-clustering matrix (N, N) of a DPGMM fitted with ``coclustering=True``."""
    if not hasattr(model, "coclustering_"):
        raise ValueError(
            f"{type(model).__name__} has no coclustering_; fit DPGMM(coclustering=True) "
            "(N <= 5000) to keep the posterior similarity matrix."
        )
    return np.asarray(model.coclustering_)


def _binder_loss(C: np.ndarray, labels: np.ndarray) -> float:
    same = (labels[:, None] == labels[None, :]).astype(np.float64)
    return float(((C - same) ** 2).sum())


def psm_point_estimate(C: Any, candidates: Sequence[Any] = ()) -> np.ndarray:
    """A labelling (N,) that summarises a similarity matrix C (N, N): the least-squares (Binder) choice.

    Candidates are the given labellings plus average-linkage cuts of ``1 - C`` at several heights;
    the one whose co-membership matrix is closest to C in squared error is returned (relabelled 0..K-1).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
        raise ValueError(f"C must be a square (N, N) matrix with N >= 2, got shape {C.shape}.")
    D = np.clip(1.0 - (C + C.T) / 2, 0.0, 1.0)
    np.fill_diagonal(D, 0.0)
    tree = linkage(squareform(D, checks=False), method="average")
    cands = [np.asarray(c) for c in candidates]
    cands += [fcluster(tree, t, criterion="distance") for t in np.linspace(0.05, 0.95, 19)]
    best = min(cands, key=lambda z: _binder_loss(C, z))
    return np.unique(best, return_inverse=True)[1]


def credible_intervals(model: Any, level: float = 0.9, min_presence: float = 0.5) -> dict[str, np.ndarray]:
    """Equal-tailed credible intervals from a DPGMM's kept draws (components sorted by weight per draw).

    Returns ``{"weights": (K, 3), "means": (K, D, 3)}`` holding (lower, median, upper) for the
    K components present in at least ``min_presence`` of the draws.
    """
    _need(model, ["draws_weights_", "draws_means_"], "credible_intervals")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    W, M = np.asarray(model.draws_weights_), np.asarray(model.draws_means_)
    if W.shape[0] == 0:
        raise ValueError("the model kept no posterior draws (increase max_iter above burn_in).")
    keep = np.mean(~np.isnan(W), axis=0) >= min_presence
    q = [(1 - level) / 2, 0.5, (1 + level) / 2]
    w_ci = np.moveaxis(np.nanquantile(W[:, keep], q, axis=0), 0, -1)
    m_ci = np.moveaxis(np.nanquantile(M[:, keep], q, axis=0), 0, -1)
    return {"weights": w_ci, "means": m_ci, "level": np.asarray(level)}


# ---------------------------------------------------------------------------------------- ArviZ
def to_inference_data(model: Any):
    """``model.to_inference_data()`` where a posterior exists; a clear TypeError otherwise."""
    fn = getattr(model, "to_inference_data", None)
    if fn is None:
        raise TypeError(
            f"{type(model).__name__} has no posterior to convert; use a DPGMM or "
            "GaussianMixture(inference='nuts' | 'svi')."
        )
    return fn()


def arviz_summary(model: Any, var_names: Sequence[str] | None = None):
    """``arviz.summary`` (mean, sd, HDI, R-hat, ESS) of the model's posterior, a pandas DataFrame."""
    import logging
    import warnings

    from .posterior import _arviz

    az = _arviz()
    logger = logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)  # single-chain draws: arviz logs a shape warning and R-hat is NaN
    try:
        idata = to_inference_data(model)
        default = [v for v in ("K", "weights", "means") if v in idata.posterior]
        names = list(var_names) if var_names else default
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return az.summary(idata, var_names=names or None, kind="all")
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------- ensembles, calibration
def _aligned(ref: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """labels relabelled to the reference's cluster ids by Hungarian matching (unmatched: new ids)."""
    mapping = hungarian_mapping(ref, labels)
    extra = iter(range(int(ref.max()) + 1, int(ref.max()) + 2 + int(labels.max())))
    table = {c: mapping[c] if c in mapping else next(extra) for c in np.unique(labels).tolist()}
    return np.array([table[c] for c in labels.tolist()])


def ensemble_disagreement(estimator: Any, X: Any, seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """Refit ``estimator`` once per seed; per-point disagreement (N,) and mean pairwise ARI.

    ``disagreement[i]`` is the fraction of members whose (Hungarian-aligned) label differs from the
    majority label of point i; ``labels`` is (S, N) aligned to the first member.
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"ensemble_disagreement needs at least 2 seeds, got {len(seeds)}.")
    from .compare import clone_with_seed

    runs = [np.asarray(clone_with_seed(estimator, s).fit(X).labels_) for s in seeds]
    return {**labelling_disagreement(runs), "seeds": seeds}


def labelling_disagreement(labelings: Sequence[Any]) -> dict[str, Any]:
    """Disagreement between S >= 2 labellings (S, N) of the same points (e.g. one model over seeds).

    Returns ``{"labels": (S, N) aligned to the first by Hungarian matching, "disagreement": (N,) fraction
    of labellings away from each point's majority label, "mean_pairwise_ari": float}``.
    """
    runs = [np.asarray(r) for r in labelings]
    if len(runs) < 2 or any(
        r.ndim != 1 or r.shape != runs[0].shape or r.dtype.kind not in "iu" for r in runs
    ):
        raise ValueError("labelings must be at least 2 integer label arrays (N,) of the same length.")
    L = np.stack([runs[0]] + [_aligned(runs[0], r) for r in runs[1:]])
    counts = (L[:, :, None] == np.arange(L.max() + 1)[None, None, :]).sum(0)  # (N, K)
    pairs = [adjusted_rand_index(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return {
        "labels": L,
        "disagreement": 1.0 - counts.max(1) / L.shape[0],
        "mean_pairwise_ari": float(np.mean(pairs)),
    }


def calibration(y_true: Any, model_or_proba: Any, X: Any = None, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data and ECE of assignment probabilities against labels.

    Clusters are first matched to classes (Hungarian on the argmax labels); a point's confidence is its
    largest probability and it is correct when its matched class equals the label. Returns
    ``{"ece", "bin_edges" (n_bins+1,), "confidence" (n_bins,), "accuracy" (n_bins,), "count" (n_bins,)}``
    (NaN for empty bins).
    """
    P = _proba(model_or_proba, X)
    y = check_labels(y_true, name="y_true", n_samples=P.shape[0])
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    pred = P.argmax(1)
    mapping = hungarian_mapping(y, pred)
    matched = np.array([mapping.get(int(c), -1) for c in pred])
    conf = P.max(1)
    correct = (matched == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
        cbar = np.bincount(b, weights=conf, minlength=n_bins) / count
    ece = float(np.nansum(count / count.sum() * np.abs(acc - cbar)))
    return {"ece": ece, "bin_edges": edges, "confidence": cbar, "accuracy": acc, "count": count}


def expected_calibration_error(y_true: Any, model_or_proba: Any, X: Any = None, n_bins: int = 10) -> float:
    """ECE (in [0, 1]) of assignment probabilities after Hungarian matching; see :func:`calibration`."""
    return calibration(y_true, model_or_proba, X, n_bins)["ece"]


def summarize(model: Any, X: Any, y: Any = None, n_least_sure: int = 10) -> dict[str, Any]:
    """Every uncertainty view that applies to ``model`` on X, as JSON-friendly values."""
    out: dict[str, Any] = {"model": type(model).__name__}
    if hasattr(model, "predict_proba"):
        H = assignment_entropy(model, X)
        out["entropy_mean"] = float(H.mean())
        out["least_sure"] = np.argsort(-H, kind="stable")[:n_least_sure].tolist()
        if y is not None:
            out["ece"] = expected_calibration_error(y, model, X)
    if hasattr(model, "posterior_k_"):
        pk = posterior_k(model)
        out["posterior_k"] = {str(k): v for k, v in pk["posterior_k"].items()}
        out["map_k"] = pk["map_k"]
        if np.asarray(getattr(model, "draws_weights_", np.zeros((0,)))).shape[0]:
            out["weights_ci"] = credible_intervals(model)["weights"].tolist()
    if getattr(model, "inference", None) in ("nuts", "svi") and hasattr(model, "to_inference_data"):
        s = arviz_summary(model, ["weights"])
        out["arviz"] = {
            "r_hat_max": float(np.nanmax(s["r_hat"])),
            "ess_bulk_min": float(np.nanmin(s["ess_bulk"])),
        }
    return out


# ---------------------------------------------------------------------- posterior predictive checks
def _full_covariances(cov: np.ndarray, cov_type: str, k: int, d: int) -> np.ndarray:
    """Covariances of S draws, (S, ...) in sklearn's shape for ``cov_type`` -> (S, K, D, D)."""
    s = cov.shape[0]
    if cov_type == "full":
        full = cov
    elif cov_type == "tied":
        full = np.broadcast_to(cov[:, None], (s, k, d, d))
    elif cov_type == "diag":
        full = cov[..., None] * np.eye(d)
    elif cov_type == "spherical":
        full = cov[..., None, None] * np.eye(d)
    else:
        raise ValueError(f"covariance_type={cov_type!r} is not supported.")
    return np.ascontiguousarray(np.broadcast_to(full, (s, k, d, d)), dtype=np.float64)


def _gmm_posterior_draws(model: Any) -> dict[str, np.ndarray]:
    """Weights (C, S, K), means (C, S, K, D) and covariances (C, S, ...) of a NUTS / SVI GaussianMixture."""
    route = getattr(model, "inference", None)
    if route == "nuts" and hasattr(model, "posterior_samples_"):
        ps = model.posterior_samples_
        return {k: np.asarray(ps[k], dtype=np.float64) for k in ("weights", "means", "covariances")}
    if route == "svi" and hasattr(model, "to_inference_data"):
        post = model.to_inference_data().posterior
        return {k: np.asarray(post[k], dtype=np.float64) for k in ("weights", "means", "covariances")}
    raise TypeError(
        f"posterior_predictive needs a GaussianMixture fitted with inference='nuts' or 'svi'; got "
        f"{type(model).__name__} with inference={route!r} (fit it first, or choose one of these routes)."
    )


def _simulate_mixture(
    weights: np.ndarray, means: np.ndarray, chol: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """One data set (n, D) per parameter draw: weights (S, K), means (S, K, D), chol (S, K, D, D)."""
    S, K, D = means.shape
    cw = np.cumsum(weights / weights.sum(-1, keepdims=True), axis=-1)
    z = np.minimum((rng.random((S, n))[..., None] > cw[:, None, :]).sum(-1), K - 1)  # (S, n)
    eps = rng.standard_normal((S, n, D))
    out = np.take_along_axis(means, z[..., None], axis=1)  # (S, n, D)
    for k in range(K):  # one batched product per component, not a loop over data
        noise = np.einsum("sij,snj->sni", chol[:, k], eps)
        out += np.where((z == k)[..., None], noise, 0.0)
    return out


def posterior_predictive(
    model: Any, X: Any = None, *, num_draws: int = 100, random_state: int | np.random.Generator | None = None
):
    """Replicated data sets from a NUTS / SVI ``GaussianMixture``'s posterior, as ``arviz.InferenceData``.

    For each chain, ``num_draws`` posterior draws are taken evenly spaced (repeated when the chain holds
    fewer, e.g. the single point of ``svi_guide="map"``), and each draw simulates a data set the size of X
    (default: the fit data). Groups: ``posterior`` (the draws used: weights, means),
    ``posterior_predictive`` (``X``: chain, draw, obs_id, feature) and ``observed_data`` (``X``), so
    ``arviz.plot_ppc`` works; :func:`ppc_pvalues` gives test statistics and p-values. Memory is about
    ``num_chains * num_draws * N * D`` floats.
    """
    from .posterior import _arviz

    if not isinstance(num_draws, int | np.integer) or isinstance(num_draws, bool) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}.")
    draws = _gmm_posterior_draws(model)
    if X is None:
        X = getattr(model, "_X_fit", None)
    X = np.asarray(X, dtype=np.float64) if X is not None else np.zeros((0,))
    C, S, K, D = draws["means"].shape
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != D:
        raise ValueError(f"X must be a non-empty (N, {D}) array, got shape {X.shape}.")
    idx = np.round(np.linspace(0, S - 1, int(num_draws))).astype(int)
    sel = {k: v[:, idx].reshape(C * len(idx), *v.shape[2:]) for k, v in draws.items()}
    full = _full_covariances(sel["covariances"], model.covariance_type, K, D)
    chol = np.linalg.cholesky((full + np.swapaxes(full, -1, -2)) / 2)
    rng = np.random.default_rng(random_state)
    rep = _simulate_mixture(sel["weights"], sel["means"], chol, X.shape[0], rng)
    shape = (C, len(idx))
    return _arviz().from_dict(
        posterior={"weights": sel["weights"].reshape(*shape, K), "means": sel["means"].reshape(*shape, K, D)},
        posterior_predictive={"X": rep.reshape(*shape, *X.shape)},
        observed_data={"X": X},
        dims={"weights": ["component"], "means": ["component", "feature"], "X": ["obs_id", "feature"]},
        attrs={"inference": str(model.inference), "covariance_type": str(model.covariance_type)},
    )


def _ppc_stats(x: np.ndarray, tail: float) -> dict[str, np.ndarray]:
    """Per-feature statistics of data x (..., N, D): each value (..., D)."""
    return {
        "mean": x.mean(-2),
        "std": x.std(-2),
        "lower_tail": np.quantile(x, 1.0 - tail, axis=-2),
        "upper_tail": np.quantile(x, tail, axis=-2),
    }


def ppc_pvalues(idata: Any, tail: float = 0.99) -> dict[str, Any]:
    """Test statistics and posterior predictive p-values of :func:`posterior_predictive`'s result.

    Statistics per feature: mean, std, and the ``1 - tail`` and ``tail`` quantiles. The p-value of a
    statistic is the fraction of replicated data sets whose statistic is at least the observed one;
    values near 0 or 1 mean the model does not reproduce that aspect of the data. Returns
    ``{"observed": {stat: (D,)}, "replicated": {stat: (R, D)}, "p_value": {stat: (D,)}, "tail": tail}``.
    """
    if not 0.5 < tail < 1:
        raise ValueError(f"tail must be a quantile level in (0.5, 1), got {tail!r}.")
    if "posterior_predictive" not in idata.groups() or "observed_data" not in idata.groups():
        raise ValueError(
            "idata needs posterior_predictive and observed_data groups (see posterior_predictive)."
        )
    obs = np.asarray(idata.observed_data["X"], dtype=np.float64)
    rep = np.asarray(idata.posterior_predictive["X"], dtype=np.float64)
    rep = rep.reshape(-1, *obs.shape)
    T_obs, T_rep = _ppc_stats(obs, tail), _ppc_stats(rep, tail)
    p = {k: (T_rep[k] >= T_obs[k]).mean(0) for k in T_obs}
    return {"observed": T_obs, "replicated": T_rep, "p_value": p, "tail": float(tail)}


# -------------------------------------------------------------------------- linear softmax margins
def _linear_layer(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(W (K, D), b (K,)) of a fitted ``EntropyClustering(head="linear")``'s single Linear layer."""
    from torch import nn

    module = getattr(model, "module_", None)
    if module is None:
        raise TypeError(
            f"linear_margins needs a fitted EntropyClustering(head='linear'); got {type(model).__name__}."
        )
    leaves = [m for m in module.modules() if not list(m.children())]
    linear = [m for m in leaves if isinstance(m, nn.Linear)]
    if len(linear) != 1 or any(not isinstance(m, nn.Linear | nn.Flatten) for m in leaves):
        raise TypeError(
            "linear_margins needs a linear softmax head (Flatten + one Linear layer, head='linear')."
        )
    W = linear[0].weight.detach().cpu().double().numpy()
    b = linear[0].bias.detach().cpu().double().numpy() if linear[0].bias is not None else np.zeros(W.shape[0])
    kind = getattr(model, "preprocess_", "none")
    if kind == "l2":
        raise TypeError("linear_margins needs boundaries that are linear in X; preprocess='l2' makes them "
                        "cones (each row is L2-normalised). Fit with preprocess='standard' to draw them.")
    if kind != "none":  # the head sees (x - shift) / scale: the same boundaries in X's units
        shift = np.broadcast_to(np.asarray(model.input_shift_, dtype=np.float64), (W.shape[1],))
        W = W / float(model.input_scale_)
        b = b - W @ shift
    return W, b


def linear_margins(model: Any, X: Any) -> dict[str, Any]:
    """Pairwise decision boundaries and margins of a linear softmax clustering on X (N, D).

    The boundary of clusters i < j is where their logits tie: ``w . x + c = 0`` with ``w = W_i - W_j``,
    ``c = b_i - b_j``. Its margin is the smallest distance ``|w . x + c| / ||w||`` of a point of X assigned
    to i or j (NaN when neither has points). Returns ``{"pairs": (P, 2), "normals": (P, D),
    "offsets": (P,), "margins": (P,), "closest": (P,) index of the closest point (-1 if none),
    "labels": (N,), "point_margin": (N,) distance of each point to its nearest boundary with another
    cluster}``.
    """
    W, b = _linear_layer(model)
    X = np.asarray(X, dtype=np.float64)
    X = X.reshape(X.shape[0], -1) if X.ndim >= 2 else X
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != W.shape[1]:
        raise ValueError(f"X must be a non-empty (N, {W.shape[1]}) array, got shape {X.shape}.")
    logits = X @ W.T + b
    labels = logits.argmax(1)
    K = W.shape[0]
    pairs = np.array([(i, j) for i in range(K) for j in range(i + 1, K)], dtype=int).reshape(-1, 2)
    normals, offsets = W[pairs[:, 0]] - W[pairs[:, 1]], b[pairs[:, 0]] - b[pairs[:, 1]]
    norms = np.linalg.norm(normals, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.abs(X @ normals.T + offsets) / norms  # (N, P)
    margins, closest = np.full(len(pairs), np.nan), np.full(len(pairs), -1)
    for p, (i, j) in enumerate(pairs):  # one vector operation per pair of clusters
        members = np.flatnonzero((labels == i) | (labels == j))
        if members.size:
            closest[p] = members[np.argmin(dist[members, p])]
            margins[p] = dist[closest[p], p]
    point_margin = np.full(X.shape[0], np.inf)
    for c in range(K):  # each point's nearest boundary with another cluster, one cluster at a time
        own = np.flatnonzero((pairs == c).any(1))
        if own.size:
            point_margin[labels == c] = dist[labels == c][:, own].min(1)
    return {"pairs": pairs, "normals": normals, "offsets": offsets, "margins": margins,
            "closest": closest, "labels": labels, "point_margin": point_margin}
