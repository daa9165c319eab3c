"""Transformation-invariant prototypes (DTI k-means) on MNIST-test digits (embedded).

    python examples/dti_prototypes.py [--quick] [--out DIR]
"""

import argparse
import os
from pathlib import Path

import bayesclust as bc

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BAYESCLUST_QUICK")))
parser.add_argument("--out", type=Path, default=Path("example-output/dti"))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

images, y = bc.datasets.load_mnist("test")
n = 100 if args.quick else 3000
model = bc.DTIKMeans(10, transforms=("affine",) if args.quick else ("affine", "morpho"),
                     max_iter=10 if args.quick else None, n_epochs=10, random_state=0)
labels = model.fit_predict(images[:n])
print("ACC / NMI / ARI / K:", bc.metrics.evaluate(y[:n], labels))
bc.plotting.plot_prototypes(model.prototypes_, title="DTI k-means prototypes",
                            path=args.out / "prototypes.png")
bc.plotting.plot_samples_per_cluster(images[:n], labels, path=args.out / "samples.png")
bc.plotting.plot_reconstructions(model, images[:4], n_images=4, path=args.out / "reconstructions.png")
print(f"figures in {args.out}")
