"""Inspecting a DPGMM posterior with ArviZ: the galaxy velocities (embedded, 82 values).

    python examples/dpgmm_posterior_arviz.py [--quick] [--out DIR]
"""

import argparse
import os
from pathlib import Path

import arviz as az

import bayesclust as bc

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BAYESCLUST_QUICK")))
parser.add_argument("--out", type=Path, default=Path("example-output/dpgmm-arviz"))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

X, _ = bc.datasets.load_galaxies()
dp = bc.DPGMM(max_iter=60 if args.quick else 400, coclustering=True, random_state=0).fit(X / 1000.0)

idata = dp.to_inference_data()  # posterior: K per kept draw, weights and means (sorted by weight)
print(idata.posterior)
print(bc.uncertainty.arviz_summary(dp, ["K", "weights"]))
ci = bc.uncertainty.credible_intervals(dp, level=0.9)
for k, ((wl, wm, wh), m) in enumerate(zip(ci["weights"], ci["means"][:, 0])):
    print(f"component {k}: weight {wm:.2f} [{wl:.2f}, {wh:.2f}], "
          f"mean {m[1]:.1f} [{m[0]:.1f}, {m[2]:.1f}] x1000 km/s")

C = bc.uncertainty.coclustering(dp)
point = bc.uncertainty.psm_point_estimate(C, [dp.labels_])
print("posterior over K:", dp.posterior_k_, "| co-clustering point estimate has", point.max() + 1, "clusters")
axes = az.plot_trace(idata, var_names=["K"])
axes.ravel()[0].figure.savefig(args.out / "trace_K.png", dpi=100)
bc.plotting.plot_coclustering(C, point, path=args.out / "coclustering.png")
bc.plotting.plot_k_trace(dp.k_trace_, dp.posterior_k_, path=args.out / "k_trace.png")
print(f"figures in {args.out}")
