"""NUTS on Old Faithful (standardised, K=2, full) and SVI step times; run from the repository root:

    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/results/gmm_pyro_measure.py
"""

import sys
import time
import warnings

import pandas as pd
import torch

sys.path.insert(0, "tests")
warnings.simplefilter("ignore")
from test_gmm_pyro import closed_form_map_em, rough_init  # noqa: E402

from bayesclust.inference.engine import Engine  # noqa: E402
from bayesclust.inference.nuts import fit_nuts  # noqa: E402
from bayesclust.inference.svi import fit_svi  # noqa: E402
from bayesclust.models.gmm_model import GMMPrior  # noqa: E402
from bayesclust.posterior import _arviz, gmm_inference_data  # noqa: E402

az = _arviz()
df = pd.read_csv("../shared/data/tabular/datasets_faithful.csv")
X = torch.tensor(df[["eruptions", "waiting"]].to_numpy(), dtype=torch.float64)
X = (X - X.mean(0)) / X.std(0)
prior = GMMPrior.from_data(X)
ref = closed_form_map_em(X, 2, "full", prior, rough_init(X, (X[:, 0] > 0).long(), 2, "full"), n_iter=300)
init = {k: ref[k] for k in ("weights", "means", "covariances")}
n, jit = 500, True
t0 = time.time()
r = fit_nuts(X, 2, "full", prior, init, num_samples=n, warmup_steps=n, num_chains=2, random_state=0,
             jit_compile=jit)
dt = time.time() - t0
idata = gmm_inference_data(r, X)
rh = az.rhat(idata)
print(f"NUTS faithful full K=2 draws={n} warmup={n} chains=2 jit={jit}: {dt:.1f} s; "
      f"divergences={int(r.divergences.sum())}; relabelled={r.n_relabelled} ({r.relabelled_fraction:.3f}); "
      f"accept={r.accept_prob}")
print("max R-hat:", {v: round(float(rh[v].max()), 4) for v in ("weights", "means", "covariances")})
print("posterior means:", r.means.numpy().round(4).tolist(),
      "MAP means:", ref["means"].numpy().round(4).tolist())
print(az.summary(idata, var_names=["weights", "means"])[["mean", "sd", "ess_bulk", "r_hat"]].to_string())

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
centres = (torch.tensor([4.0, 0]), torch.tensor([-4.0, 0]), torch.tensor([0.0, 4]))
X2 = torch.cat([torch.randn(700, 2, generator=g) + c for c in centres]).double()
y2 = torch.arange(3).repeat_interleave(700)
pr = GMMPrior.from_data(X2)
for guide in ("map", "meanfield"):
    eng = Engine(maximize=False, dtype="float64", device="cpu", max_iter=50, tol=0, random_state=0)
    t0 = time.time()
    fit_svi(X2, 3, "full", pr, rough_init(X2, y2, 3, "full"), eng, guide=guide)
    print(f"SVI {guide} N=2100 D=2 K=3 full, 1 thread: {(time.time() - t0) / 50 * 1000:.1f} ms per step "
          "(50 steps, incl. setup)")
