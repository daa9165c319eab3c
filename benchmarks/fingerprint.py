"""Behaviour fingerprint: labels hash and final objective of every estimator x route on fixed data.

Run before and after a restructuring; identical tables mean identical behaviour on these cases.

    .venv/bin/python benchmarks/fingerprint.py > benchmarks/results/fingerprint_after.md
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np

import bayesclust as bc


def _blobs(seed: int, n: int = 240, d: int = 3, k: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _images(seed: int, n: int = 90) -> np.ndarray:
    rng = np.random.default_rng(seed)
    protos = np.zeros((3, 12, 12), np.float32)
    protos[0, 3:9, 5:7] = 1.0
    protos[1, 5:7, 2:10] = 1.0
    protos[2, 3:9, 3:9] = 1.0
    return (protos[rng.integers(0, 3, n)] + 0.05 * rng.normal(size=(n, 12, 12))).astype(np.float32)


def _cases():
    X = _blobs(0)
    img = _images(1)
    flat = img.reshape(len(img), -1)
    for cov in ("full", "tied", "diag", "spherical"):
        for prior in ("niw", None):
            yield f"GMM em {cov} prior={prior}", bc.GaussianMixture(
                3, covariance_type=cov, prior=prior, random_state=0
            ), X
    yield "GMM svi full", bc.GaussianMixture(3, inference="svi", max_iter=30, random_state=0), X
    yield "GMM nuts diag", bc.GaussianMixture(
        3, covariance_type="diag", inference="nuts", num_samples=20, warmup_steps=20, num_chains=1,
        random_state=0,
    ), X[:60]
    yield "DPGMM splitmerge", bc.DPGMM(max_iter=40, random_state=0), X
    yield "DPGMM vi", bc.DPGMM(inference=_vi_name(), max_iter=60, random_state=0), X
    yield "DPGMM deep", bc.DPGMM(inference="deep", max_iter=6, random_state=0), X
    dti = {"transforms": ("affine",), "max_iter": 20, "batch_size": 32, "encoder_width": 8,
           "feature_dim": 16, "head_hidden": 16, "random_state": 0, "device": "cpu"}
    yield "DTIKMeans affine", bc.DTIKMeans(3, **dti), img
    yield "DTIGMM affine", bc.DTIGMM(3, **dti), img
    for loss in ("mi", "renyi", "collision", "sela", "swav", "ce", "rce"):
        yield f"Entropy linear {loss}", bc.EntropyClustering(
            3, loss=loss, max_iter=4, warmup=1, random_state=0
        ), flat
    yield "Entropy mlp collision vat", bc.EntropyClustering(
        3, head="mlp", hidden=32, loss="collision", aug_weight=1.0, augmentation="vat", vat_knn=5,
        max_iter=3, warmup=1, random_state=0,
    ), flat
    yield "Entropy cnn mi n_init=2 screened", bc.EntropyClustering(
        3, head="cnn", loss="mi", max_iter=3, n_init=2, init_epochs=1, random_state=0
    ), img


def _vi_name() -> str:
    """The closed-form DP route: 'svi' before the architecture issue, 'vi' after it."""
    return "vi"


def _objective(model) -> str:
    for name in ("history_",):
        h = getattr(model, name, None)
        if h:
            return f"{float(h[-1]):.6g}"
    return "-"


def main() -> None:
    print("| case | labels sha1 | K | final objective | n_iter |")
    print("|---|---|---|---|---|")
    for name, model, data in _cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(data)
        labels = np.asarray(model.labels_, dtype=np.int64)
        digest = hashlib.sha1(labels.tobytes()).hexdigest()[:12]
        k = len(np.unique(labels))
        print(f"| {name} | {digest} | {k} | {_objective(model)} | {getattr(model, 'n_iter_', '-')} |",
              flush=True)


if __name__ == "__main__":
    main()
