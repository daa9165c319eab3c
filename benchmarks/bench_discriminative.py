"""Discriminative clustering benchmark: EntropyClustering losses vs K-means on real data.

Examples (the settings of benchmarks/results/discriminative.md)::

    # MNIST-test raw pixels, linear head, every loss, 3 seeds, K-means in the same run
    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_discriminative.py \
        --data mnist --split test --head linear --losses mi,renyi,collision,rce,ce,sela,swav \
        --seeds 0,1,2 --epochs 30 --lr 1e-2 --weight-decay 1e-2 --lam 2 --warmup 10
    # MNIST 70k, IMSAT MLP + VAT, collision-CE self-labelling, 20-minute budget
    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_discriminative.py \
        --data mnist --split all --head mlp --losses collision --seeds 0 --epochs 50 --lr 2e-3 \
        --weight-decay 0 --lam 2 --warmup 1 --batch-size 250 --aug-weight 1 --augmentation vat \
        --budget-min 20 --log-epochs
    # pseudo-label step cost at N = 1e6, K = 1e3 against one MLP epoch
    flock /tmp/bayesclust_bench.lock .venv/bin/python benchmarks/bench_discriminative.py \
        --only pseudolabel-cost --epoch-fraction 0.1

Prints ACC/NMI/ARI mean +- std over seeds, each with its K-means baseline in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bayesclust.datasets import load_mnist, load_usps
from bayesclust.estimators.entropy import EntropyClustering
from bayesclust.metrics import evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        return load_mnist(split, path=DATA / "mnist", flatten=True)
    return load_usps(split, path=DATA / "usps" / "usps.h5")


def kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=1, random_state=seed).fit_predict(X)


@dataclass
class _CostCase:
    """The pseudo-label cost case: inputs ``X`` (N, D) of classes ``comp`` (N,), the MLP, its Adam
    optimiser and the batches of one shuffled epoch (``n_batches`` of them are trained on)."""

    X: torch.Tensor
    comp: torch.Tensor
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    perm: torch.Tensor
    starts: range
    n_batches: int
    batch: int

    def train(self, targets: torch.Tensor) -> None:
        """``n_batches`` steps of hard-label cross-entropy on ``targets`` (N,)."""
        for s in self.starts[: self.n_batches]:
            idx = self.perm[s : s + self.batch]
            self.opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.model(self.X[idx]), targets[idx]).backward()
            self.opt.step()

    def predictions_into(self, buf: torch.Tensor) -> None:
        """Softmax predictions (N, K) into ``buf``, as inference.discriminative.predictions_into."""
        with torch.no_grad():
            for s in range(0, len(self.X), 8192):
                buf[s : s + 8192] = self.model(self.X[s : s + 8192]).softmax(1)

    def scale(self, seconds: float) -> float:
        """A time measured on ``n_batches`` batches, scaled to a full epoch."""
        return seconds * len(self.starts) / self.n_batches


def _cost_case(n: int, k: int, d: int, hidden: int, batch: int, epoch_fraction: float) -> _CostCase:
    torch.manual_seed(0)
    comp = torch.randint(0, k, (n,))
    centers = torch.randn(k, d)
    X = torch.empty(n, d)
    for s in range(0, n, 65536):
        X[s : s + 65536] = centers[comp[s : s + 65536]] + 3.0 * torch.randn(min(65536, n - s), d)
    model = torch.nn.Sequential(
        torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, k),
    )
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    starts = range(0, n, batch)
    n_batches = max(1, round(len(starts) * epoch_fraction))
    return _CostCase(X, comp, model, opt, torch.randperm(n), starts, n_batches, batch)


def _time_vat_epoch(case: _CostCase) -> float:
    """The same batches with the self-labelling recipe's VAT term (bench MNIST settings: xi 10, eps
    1.5, weight 10): what one epoch of collision-CE training with self-augmentation costs."""
    from bayesclust.losses import self_augmentation_loss
    from bayesclust.models.heads import vat_view

    t = time.perf_counter()
    for s in case.starts[: case.n_batches]:
        idx = case.perm[s : s + case.batch]
        case.opt.zero_grad(set_to_none=True)
        xb = case.X[idx]
        z = case.model(xb)
        za = case.model(vat_view(case.model, xb, z, 1.5))
        loss = torch.nn.functional.cross_entropy(z, case.comp[idx])
        (loss + 10.0 * self_augmentation_loss(z.detach(), za)).backward()
        case.opt.step()
    return case.scale(time.perf_counter() - t)


def _time_em(case: _CostCase, buf: torch.Tensor) -> dict:
    """The first pseudo-label step of a fit, as EntropyClustering runs it (lam 1, em_iter 20, tol
    1e-6; the solver allocates y, initialised from sigma), then a later step: the network trains on
    ``n_batches`` more batches and the step is warm-started from the previous labels in place."""
    from bayesclust.inference.softlabels import em_soft_labels

    t = time.perf_counter()
    em = em_soft_labels(buf, 1.0, max_iter=20)
    t_em = time.perf_counter() - t
    case.train(case.comp)
    case.predictions_into(buf)
    t = time.perf_counter()
    warm = em_soft_labels(buf, 1.0, max_iter=20, init=em.y, out=em.y)
    t_warm = time.perf_counter() - t
    # iteration counts and objectives only: the (N, K) labels are freed before the SeLa timings
    return {"t_em": t_em, "em": (em.n_iter, em.objective[0], em.objective[-1]),
            "t_warm": t_warm, "warm": (warm.n_iter, warm.objective[0], warm.objective[-1])}


def _time_sela(case: _CostCase, buf: torch.Tensor) -> dict:
    """SeLa hard labels (lam 25, over-relaxed kernel Sinkhorn, L1 error <= 1e-2, <= 100 iterations;
    timed with sigma -> log sigma) from scratch, then warm-started from its column potential after
    ``n_batches`` more batches of training on its labels."""
    from bayesclust.inference.sinkhorn import sela_labels

    def log_in_place() -> None:  # sigma -> log sigma, chunk by chunk
        for s in range(0, len(buf), 8192):
            buf[s : s + 8192].clamp_min_(1e-30).log_()

    t = time.perf_counter()
    log_in_place()
    labels, sk = sela_labels(buf, lam=25.0, max_iter=100, tol=1e-2, overwrite=False)
    t_sela = time.perf_counter() - t
    case.train(labels)
    case.predictions_into(buf)
    t = time.perf_counter()
    log_in_place()
    labels2, sk2 = sela_labels(buf, lam=25.0, max_iter=100, tol=1e-2, overwrite=False, init_log_v=sk.log_v)
    k = buf.shape[1]
    return {"sk": sk, "t_sela": t_sela, "counts": torch.bincount(labels, minlength=k),
            "sk2": sk2, "t_sela2": time.perf_counter() - t, "counts2": torch.bincount(labels2, minlength=k)}


def pseudolabel_cost(
    n: int, k: int, d: int = 256, hidden: int = 1200, batch: int = 256, epoch_fraction: float = 1.0
) -> None:
    """Time the pseudo-label solvers on N x K predictions against one training epoch on N x D inputs.

    Backbone: the IMSAT-sized MLP D-1200-1200-K (ReLU), Adam, batch 256, cross-entropy on hard labels
    (the matmul cost of collision CE). Inputs: a K-component Gaussian mixture in D dimensions (noise
    3.0 x N(0, I) around N(0, I) centres: overlapping classes, so the predictions are informative but
    not one-hot); the solvers see this network's predictions after its one epoch. Timed: the epoch;
    the same batches with the VAT term (:func:`_time_vat_epoch`: the epoch the pseudo-label step
    alternates with in ``EntropyClustering(aug_weight>0, augmentation="vat")``); the prediction pass
    (forward + softmax over all N into a buffer allocated once: what ``label_predictions="fresh"``
    adds to a step); EM collision-CE soft labels (:func:`_time_em`); SeLa hard labels
    (:func:`_time_sela`). ``epoch_fraction < 1`` trains on that share of the batches only and scales
    its time up to a full epoch (printed as such); the solvers always see all N rows.
    """
    from bayesclust._device import empty_buffer

    case = _cost_case(n, k, d, hidden, batch, epoch_fraction)
    t = time.perf_counter()
    case.train(case.comp)
    measured = time.perf_counter() - t
    times = {"epoch": case.scale(measured), "measured": measured, "epoch_vat": _time_vat_epoch(case)}
    buf = empty_buffer(n, k, torch.float32, torch.device("cpu"))  # allocated once per fit
    case.predictions_into(buf)  # first touch of the buffer, untimed
    t = time.perf_counter()
    case.predictions_into(buf)
    times["fwd"] = time.perf_counter() - t
    times["acc"] = float((buf.argmax(1) == case.comp).float().mean())
    times.update(_time_em(case, buf))
    times.update(_time_sela(case, buf))
    _print_cost(case, d, hidden, times)


def _print_cost(case: _CostCase, d: int, hidden: int, r: dict) -> None:
    n, k = case.comp.shape[0], r["counts"].shape[0]
    epoch, epoch_vat, em, warm, sk, sk2 = r["epoch"], r["epoch_vat"], r["em"], r["warm"], r["sk"], r["sk2"]
    t_fwd, t_em, t_warm, t_sela, t_sela2 = r["fwd"], r["t_em"], r["t_warm"], r["t_sela"], r["t_sela2"]
    counts, counts2, n_batches = r["counts"], r["counts2"], case.n_batches

    def pct(x: float) -> str:
        return f"{x / epoch:5.1%} of the epoch, {x / epoch_vat:5.1%} of the VAT epoch"

    print(
        f"N={n} K={k} D={d}; backbone MLP {d}-{hidden}-{hidden}-{k} (ReLU), Adam, batch {case.batch}\n"
        f"  one training epoch:                {epoch:8.1f} s  ({n_batches} of {len(case.starts)} batches "
        f"timed: {r['measured']:.1f} s; train argmax acc after them {r['acc']:.3f})\n"
        f"  one epoch with VAT (same batches): {epoch_vat:8.1f} s\n"
        f"  prediction pass (forward + softmax, N): {t_fwd:6.1f} s  ({pct(t_fwd)})\n"
        f"  EM collision labels, first step:   {t_em:8.2f} s  ({pct(t_em)}; {em[0]} iterations, "
        f"{t_em / em[0]:.3f} s each incl. the init pass; F {em[1]:.4f} -> {em[2]:.4f})\n"
        f"  EM collision labels, warm step:    {t_warm:8.2f} s  ({pct(t_warm)}; {warm[0]} iterations "
        f"after {n_batches} more batches; F {warm[1]:.4f} -> {warm[2]:.4f})\n"
        f"  pseudo-label step, label_predictions='epoch' (EM only): {pct(t_warm)}\n"
        f"  pseudo-label step, label_predictions='fresh' (pass + EM): {pct(t_fwd + t_warm)}\n"
        f"  SeLa Sinkhorn + labels:            {t_sela:8.2f} s  ({pct(t_sela)}; "
        f"{sk.n_iter} iterations, {t_sela / sk.n_iter:.2f} s each incl. log and kernel; path {sk.method}, "
        f"marginal L1 error {sk.error:.2e}, "
        f"cluster sizes {int(counts.min())}..{int(counts.max())})\n"
        f"  SeLa, warm step:                   {t_sela2:8.2f} s  ({pct(t_sela2)}; "
        f"{sk2.n_iter} iterations after {n_batches} more batches; marginal L1 error {sk2.error:.2e}, "
        f"cluster sizes {int(counts2.min())}..{int(counts2.max())})"
    )


def label_noise(data: str, seeds: list[int], n_train: int, epochs: int = 20) -> None:
    """Supervised training on noisy soft targets (the seed's Figure 2.2): ACC on clean test data.

    A share ``eta`` of the first ``n_train`` training labels is resampled uniformly, and every target
    is softened to ``(1 - eta) onehot(label) + eta / K``; an MLP D-256-K (ReLU, Adam 1e-3, batch 256,
    ``epochs`` epochs) is trained on them with standard CE ``H(y, sigma)``, collision CE
    ``-ln(sigma . y)`` or reverse CE ``H(sigma, y)``, and scored on the clean test split. Prints
    the table and writes ``benchmarks/results/label_noise.png``.
    """
    from bayesclust import losses as L

    Xtr, ytr = load(data, "train")
    Xte, yte = load(data, "test")
    Xtr = torch.as_tensor(np.asarray(Xtr[:n_train], np.float32))
    ytr = torch.as_tensor(np.asarray(ytr[:n_train], np.int64))
    Xte = torch.as_tensor(np.asarray(Xte, np.float32))
    yte = torch.as_tensor(np.asarray(yte, np.int64))
    n, d = Xtr.shape
    k = int(ytr.max()) + 1
    losses = {"ce": L.cross_entropy, "collision": L.collision_cross_entropy, "rce": L.reverse_cross_entropy}
    etas = [0.0, 0.2, 0.4, 0.6, 0.8]
    acc = {name: np.zeros((len(etas), len(seeds))) for name in losses}
    t0 = time.perf_counter()
    for j, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        for i, eta in enumerate(etas):
            flip = torch.rand(n, generator=g) < eta
            noisy = torch.where(flip, torch.randint(0, k, (n,), generator=g), ytr)
            tgt = (1 - eta) * torch.nn.functional.one_hot(noisy, k).float() + eta / k
            for name, fn in losses.items():
                torch.manual_seed(seed)
                net = torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.ReLU(), torch.nn.Linear(256, k))
                opt = torch.optim.Adam(net.parameters(), 1e-3)
                for _ in range(epochs):
                    for b in torch.randperm(n, generator=g).split(256):
                        opt.zero_grad(set_to_none=True)
                        fn(net(Xtr[b]), tgt[b]).backward()
                        opt.step()
                with torch.no_grad():
                    acc[name][i, j] = float((net(Xte).argmax(1) == yte).float().mean())
    print(f"data={data} n_train={n} n_test={len(yte)} MLP {d}-256-{k} epochs={epochs} seeds={seeds} "
          f"({time.perf_counter() - t0:.0f} s)")
    print("| eta | " + " | ".join(losses) + " |\n|---|" + "---|" * len(losses))
    for i, eta in enumerate(etas):
        cells = " | ".join(f"{acc[m][i].mean():.3f} +- {acc[m][i].std():.3f}" for m in losses)
        print(f"| {eta:.1f} | {cells} |")
    _plot_label_noise(data, etas, acc)


def _plot_label_noise(data: str, etas: list[float], acc: dict[str, np.ndarray]) -> None:
    """Test ACC (mean +- std over seeds) against eta per loss, to benchmarks/results/label_noise.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name in acc:
        ax.errorbar(etas, acc[name].mean(1), yerr=acc[name].std(1), marker="o", capsize=3, label=name)
    ax.set_xlabel("eta (share of resampled labels; targets softened by eta)")
    ax.set_ylabel("test ACC")
    ax.set_title(f"{data}: supervised MLP on noisy soft targets")
    ax.legend()
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "results" / "label_noise.png"
    fig.savefig(out, dpi=120)
    print(f"figure: {out.relative_to(Path(__file__).resolve().parents[1])}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist", choices=["mnist", "usps"])
    ap.add_argument("--split", default="test", choices=["test", "train", "all"])
    ap.add_argument("--n", type=int, default=None, help="use the first n samples")
    ap.add_argument("--head", default="linear", choices=["linear", "mlp", "cnn"])
    ap.add_argument("--hidden", type=int, default=1200, help="MLP width (IMSAT: 1200)")
    ap.add_argument("--losses", default="mi", help="comma list of mi,renyi,collision,sela,swav,ce,rce")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--lam", type=float, default=2.0, help="fairness weight (MI and EM labels)")
    ap.add_argument("--warmup", type=int, default=10, help="MI epochs before self-labelling starts")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--aug-weight", type=float, default=0.0)
    ap.add_argument("--augmentation", default="random", choices=["random", "vat", "vat+random"])
    ap.add_argument("--images", action="store_true",
                    help="fit on (N, 1, H, W) images whatever the head (random affine views need images)")
    ap.add_argument("--vat-eps", type=float, default=1.5)
    ap.add_argument("--vat-knn", type=int, default=None,
                    help="per-sample VAT radius vat_eps x distance to this neighbour (IMSAT: 0.25, 10)")
    ap.add_argument("--em-iter", type=int, default=20, help="EM iterations per pseudo-label step")
    ap.add_argument("--n-init", type=int, default=1, help="restarts per fit, the highest-MI one kept")
    ap.add_argument("--init-epochs", type=int, default=None,
                    help="screen restarts: each trains this many epochs, the highest-MI one goes on")
    ap.add_argument("--fairness", default="entropy", choices=["entropy", "kl_uniform", "kl_reverse"],
                    help="fairness term of the MI / Renyi losses and the warm-up")
    ap.add_argument("--label-predictions", default="fresh", choices=["auto", "fresh", "epoch"],
                    help="EntropyClustering(label_predictions=...): the predictions a label step solves on")
    ap.add_argument("--budget-min", type=float, default=None, help="stop each fit after this many minutes")
    ap.add_argument("--log-epochs", action="store_true", help="print ACC per epoch (labels: report only)")
    ap.add_argument("--no-kmeans", action="store_true")
    ap.add_argument("--confusion", action="store_true", help="print each fit's class x cluster counts")
    ap.add_argument("--only", choices=["pseudolabel-cost", "label-noise"], default=None,
                    help="run one special case")
    ap.add_argument("--cost-n", type=int, default=1_000_000, help="N for --only pseudolabel-cost")
    ap.add_argument("--cost-k", type=int, default=1000, help="K for --only pseudolabel-cost")
    ap.add_argument("--epoch-fraction", type=float, default=1.0, help="share of the epoch's batches timed")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def main() -> None:
    a = _parser().parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {platform.processor() or platform.machine()}"
        f" | torch {torch.__version__} threads {torch.get_num_threads()} | load {os.getloadavg()}"
    )
    if a.only == "pseudolabel-cost":
        pseudolabel_cost(a.cost_n, a.cost_k, epoch_fraction=a.epoch_fraction)
        print(f"load {os.getloadavg()}")
        return
    if a.only == "label-noise":
        label_noise(a.data, [int(s) for s in a.seeds.split(",")], a.n or 10_000)
        print(f"load {os.getloadavg()}")
        return
    X, y = load(a.data, a.split)
    X = np.asarray(X, dtype=np.float32)
    if a.n:
        X, y = X[: a.n], y[: a.n]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        if not a.no_kmeans:
            t = time.perf_counter()
            rows.setdefault("kmeans", []).append(
                {**evaluate(y, kmeans(X, 10, seed)), "s": time.perf_counter() - t}
            )
        for loss in a.losses.split(","):
            rows.setdefault(loss, []).append(_fit_one(a, X, y, loss, seed))
    _print_summary(a, len(X), seeds, rows)


def _fit_one(a: argparse.Namespace, X: np.ndarray, y: np.ndarray, loss: str, seed: int) -> dict:
    """One EntropyClustering fit with the command line's settings: its scores, seconds and epochs."""
    t = time.perf_counter()
    # (N, 1, H, W) images for the CNN, or with --images (the random affine view needs them;
    # linear and MLP heads flatten them)
    side = 28 if a.data == "mnist" else 16
    Xfit = X.reshape(len(X), 1, side, side) if a.head == "cnn" or a.images else X
    callbacks = [_epoch_callback(Xfit, y, t, a.budget_min, a.log_epochs, loss, seed)]
    m = EntropyClustering(
        10, head=a.head, loss=loss, hidden=a.hidden, max_iter=a.epochs, learning_rate=a.lr,
        weight_decay=a.weight_decay, lam=a.lam, warmup=a.warmup, batch_size=a.batch_size,
        aug_weight=a.aug_weight, augmentation=a.augmentation, vat_eps=a.vat_eps, vat_knn=a.vat_knn,
        em_iter=a.em_iter, label_predictions=a.label_predictions, n_init=a.n_init,
        init_epochs=a.init_epochs, fairness=a.fairness, random_state=seed, callbacks=callbacks,
        # the recipes' frame: pixels in [0, 1] (MNIST and USPS as loaded), which the unit-range map
        # leaves exactly unchanged; random head initialisation as when the recipes were measured
        preprocess="unit_range", init="random",
    )
    pred = m.fit_predict(Xfit)
    if a.confusion:
        print_confusion(y, pred, f"{loss} seed {seed}")
    return {**evaluate(y, pred), "s": time.perf_counter() - t, "ep": m.n_iter_}


def _print_summary(a: argparse.Namespace, n: int, seeds: list[int], rows: dict[str, list[dict]]) -> None:
    print(
        f"data={a.data}/{a.split} n={n} head={a.head} epochs<={a.epochs} lr={a.lr} "
        f"wd={a.weight_decay} lam={a.lam} warmup={a.warmup} batch={a.batch_size} aug={a.augmentation}"
        f"x{a.aug_weight} vat_eps={a.vat_eps} "
        f"vat_knn={a.vat_knn} em_iter={a.em_iter} label_predictions={a.label_predictions} n_init={a.n_init} "
        f"init_epochs={a.init_epochs} fairness={a.fairness} "
        f"seeds={seeds} "
        f"budget_min={a.budget_min}"
    )
    print("| method | ACC | NMI | ARI | seconds/run | epochs |\n|---|---|---|---|---|---|")
    for name, rs in rows.items():
        f = lambda key, rs=rs: f"{np.mean([r[key] for r in rs]):.3f} +- {np.std([r[key] for r in rs]):.3f}"  # noqa: E731
        ep = np.mean([r.get("ep", 0) for r in rs])
        secs = np.mean([r["s"] for r in rs])
        print(f"| {name} | {f('acc')} | {f('nmi')} | {f('ari')} | {secs:.1f} | {ep:.0f} |")
    print(f"load {os.getloadavg()}")


def print_confusion(y: np.ndarray, pred: np.ndarray, title: str) -> None:
    """Classes x clusters counts, clusters ordered by their Hungarian-matched class (report only).

    The ``match`` row names each column's matched class (``-``: none); empty clusters do not appear.
    """
    from bayesclust.metrics import contingency_matrix, hungarian_mapping

    c = contingency_matrix(y, pred)
    match = hungarian_mapping(y, pred)
    order = [j for j in sorted(range(c.shape[1]), key=lambda j: match.get(j, c.shape[0] + j))
             if c[:, j].sum() > 0]
    c = c[:, order]
    print(f"  confusion [{title}]: rows = classes, columns = non-empty clusters")
    print("    match  " + " ".join(f"{match[j] if j in match else '-':>5}" for j in order))
    print("    sizes  " + " ".join(f"{v:5d}" for v in c.sum(0)))
    for i, row in enumerate(c):
        print(f"    {i:5d}  " + " ".join(f"{v:5d}" for v in row))


def _epoch_callback(X, y, t0, budget_min, log, loss, seed):
    """Stop a fit after ``budget_min`` minutes; optionally print ACC (labels used for reporting only)
    and the mutual information of the predictions on X (what ``n_init`` / ``init_epochs`` select by)."""
    from bayesclust.losses import mi_loss

    def cb(engine, iteration, objective, state):
        elapsed = time.perf_counter() - t0
        if log:
            model = state["model"]
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(torch.from_numpy(X[s : s + 4096])) for s in range(0, len(X), 4096)])
            pred = logits.argmax(1).numpy()
            mi = -float(mi_loss(logits.double()))
            r = evaluate(y, pred)
            print(
                f"  [{loss} seed {seed}] epoch {iteration + 1}: objective {objective:.4f} "
                f"ACC {r['acc']:.3f} NMI {r['nmi']:.3f} MI {mi:.4f} {elapsed:.0f} s",
                flush=True,
            )
        return budget_min is not None and elapsed > 60 * budget_min

    return cb


if __name__ == "__main__":
    main()
