"""Generative vs discriminative clustering on MNIST-test (embedded): a GMM and a softmax entropy head.

    python examples/generative_vs_discriminative_mnist.py [--quick] [--out DIR]
"""

import argparse
import os
from pathlib import Path

import numpy as np

import bayesclust as bc

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BAYESCLUST_QUICK")))
parser.add_argument("--out", type=Path, default=Path("example-output/mnist-compare"))
args = parser.parse_args()

images, y = bc.datasets.load_mnist("test", flatten=True)
n = 300 if args.quick else 5000
X, y = images[:n], y[:n]
Xc = X - X.mean(0)
Z = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:30].T  # 30 PCA features, shared by both models

models = {
    "GMM (diag, EM)": bc.GaussianMixture(10, covariance_type="diag", n_init=2),
    "entropy head (MLP)": bc.EntropyClustering(10, head="mlp", loss="mi", max_iter=5 if args.quick else 40),
}
comp = bc.compare(models, Z, y, seeds=(0,) if args.quick else (0, 1, 2), progress=True)
print(comp.to_markdown())
args.out.mkdir(parents=True, exist_ok=True)
comp.to_json(args.out / "comparison.json")
for name, fitted in comp.models.items():
    ece = bc.uncertainty.expected_calibration_error(y, fitted[0], Z)
    print(f"{name}: expected calibration error {ece:.3f}")
print("figures:", [p.name for p in comp.figures(args.out)])
