"""Clustering pretrained embeddings: the DeepDPM AE+UMAP features of MNIST when present, K inferred.

    python examples/cluster_embeddings.py [path/to/embeddings.npz] [--quick] [--out DIR]

The .npz holds ``X`` (N, D) and optionally ``y``. Default: ``mnist70k_ae_umap10.npz`` from
``$BAYESCLUST_DATA`` or ../shared/data; without it, 20 PCA features of the embedded MNIST-test stand in.
"""

import argparse
import os
from pathlib import Path

import numpy as np

import bayesclust as bc

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("npz", nargs="?", default=None)
parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BAYESCLUST_QUICK")))
parser.add_argument("--out", type=Path, default=Path("example-output/embeddings"))
args = parser.parse_args()

shared = Path(__file__).resolve().parents[2] / "shared" / "data"
try:
    X, y = bc.datasets.load_embeddings("mnist", path=args.npz or os.environ.get("BAYESCLUST_DATA", shared))
    source = "DeepDPM MNIST AE+UMAP embeddings"
except FileNotFoundError:
    images, y = bc.datasets.load_mnist("test", flatten=True)
    Xc = images - images.mean(0)
    X = Xc @ np.linalg.svd(Xc[:3000], full_matrices=False)[2][:20].T
    source = "PCA-20 of MNIST-test (stand-in)"
n = 2000 if args.quick else 20000
idx = np.random.default_rng(0).permutation(len(X))[:n]
X, y = X[idx], (None if y is None else y[idx])
print(f"{source}: {X.shape}")

models = {"DPGMM (VI, K inferred)": bc.DPGMM(inference="vi", max_iter=50 if args.quick else 200),
          "GMM (K=10)": bc.GaussianMixture(10, covariance_type="full", n_init=2)}
comp = bc.compare(models, X, y, seeds=(0,))
print(comp.to_markdown())
args.out.mkdir(parents=True, exist_ok=True)
comp.to_json(args.out / "comparison.json")
print("figures:", [p.name for p in comp.figures(args.out)])
