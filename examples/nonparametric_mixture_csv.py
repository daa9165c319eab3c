"""A nonparametric mixture on your own CSV: the DPGMM infers K; labels, probabilities and a figure.

    python examples/nonparametric_mixture_csv.py my_points.csv --columns x y [--quick] [--out DIR]

Without a file it uses the embedded Old Faithful table (bayesclust/data/datasets_faithful.csv).
"""

import argparse
import os
from pathlib import Path

import numpy as np

import bayesclust as bc
from bayesclust.datasets import _EMBEDDED

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("csv", nargs="?", default=_EMBEDDED / "datasets_faithful.csv")
parser.add_argument("--columns", nargs="+", default=None, help="feature columns (default: all numeric)")
parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BAYESCLUST_QUICK")))
parser.add_argument("--out", type=Path, default=Path("example-output/nonparametric"))
args = parser.parse_args()
faithful = Path(args.csv).name == "datasets_faithful.csv"
columns = args.columns or (["eruptions", "waiting"] if faithful else None)

X, _ = bc.datasets.load_table(args.csv, columns=columns)
Z = (X - X.mean(0)) / X.std(0)  # the DPGMM's prior is set in standardised units anyway; plots read better
dp = bc.DPGMM(max_iter=40 if args.quick else 200, coclustering=len(X) <= 2000, random_state=0).fit(Z)
print(f"{len(X)} rows, {X.shape[1]} features -> K = {dp.n_components_}; posterior over K: {dp.posterior_k_}")

args.out.mkdir(parents=True, exist_ok=True)
proba = dp.predict_proba(Z)
np.savetxt(args.out / "labels.csv", np.column_stack([dp.labels_, proba]), delimiter=",", comments="",
           header="label," + ",".join(f"p_{k}" for k in range(proba.shape[1])), fmt="%.6g")
entropy = bc.uncertainty.assignment_entropy(proba)
print("least sure rows:", bc.uncertainty.least_sure(proba, n=5).tolist(),
      f"(mean entropy {entropy.mean():.3f} nats)")
if X.shape[1] == 2:
    bc.plotting.plot_uncertainty_map(dp, Z, path=args.out / "uncertainty.png", xlabel="feature 1 (z)",
                                     ylabel="feature 2 (z)")
bc.plotting.plot_k_trace(dp.k_trace_, dp.posterior_k_, burn_in=len(dp.k_trace_) - len(dp.draws_weights_),
                         path=args.out / "k_trace.png")
print(f"wrote {args.out}/labels.csv and figures")
