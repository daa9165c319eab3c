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


def pseudolabel_cost(
    n: int, k: int, d: int = 256, hidden: int = 1200, batch: int = 256, epoch_fraction: float = 1.0
) -> None:
    """Time the pseudo-label solvers on N x K predictions against one training epoch on N x D inputs.

    Backbone: the IMSAT-sized MLP D-1200-1200-K (ReLU), Adam, batch 256, cross-entropy on hard labels
    (the matmul cost of collision CE). Inputs: a K-component Gaussian mixture in D dimensions; the
    solvers see this network's predictions after its one epoch. Timed: the epoch; the same batches
    again with the VAT self-augmentation term of the self-labelling recipe (two extra forward and
    one extra backward pass per batch: the epoch the pseudo-label step actually alternates with in
    ``EntropyClustering(aug_weight>0, augmentation="vat")``); the prediction pass (forward + softmax
    over all N into a buffer allocated once: what ``label_predictions="fresh"`` adds to a step); EM
    collision-CE soft labels with EntropyClustering's settings (lam=1, ``em_iter`` 20, tol 1e-6), first
    from sigma (the solver allocates y), then warm-started in place from those labels after another
    ``epoch_fraction`` of training (a later step); SeLa hard labels (lam=25, kernel Sinkhorn
    over-relaxed as ``sela_labels`` does by default, stop at column-marginal L1 error <= 1e-2, <= 100
    iterations; includes the log), first from scratch, then warm-started from its column potential
    after another ``epoch_fraction`` of training on its labels (a later step). Noise 3.0 x N(0, I)
    around N(0, I) centres: overlapping classes,
    so the predictions are informative but not one-hot. ``epoch_fraction < 1`` trains on that share
    of the batches only and scales its time up to a full epoch (printed as such); the solvers always
    see all N rows.
    """
    from bayesclust.inference.selflabel import em_soft_labels, sela_labels
    from bayesclust.losses import self_augmentation_loss
    from bayesclust.models.heads import vat_view

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
    perm = torch.randperm(n)
    starts = range(0, n, batch)
    n_batches = max(1, round(len(starts) * epoch_fraction))

    def train(targets: torch.Tensor) -> None:  # n_batches steps of hard-label cross-entropy
        for s in starts[:n_batches]:
            idx = perm[s : s + batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[idx]), targets[idx]).backward()
            opt.step()

    t = time.perf_counter()
    train(comp)
    epoch_measured = time.perf_counter() - t
    epoch = epoch_measured * len(starts) / n_batches
    # the same batches with the self-labelling recipe's VAT term (bench MNIST settings: xi 10, eps
    # 1.5, weight 10): what one epoch of collision-CE training with self-augmentation costs
    t = time.perf_counter()
    for s in starts[:n_batches]:
        idx = perm[s : s + batch]
        opt.zero_grad(set_to_none=True)
        xb = X[idx]
        z = model(xb)
        za = model(vat_view(model, xb, z, 1.5))
        loss = torch.nn.functional.cross_entropy(z, comp[idx])
        (loss + 10.0 * self_augmentation_loss(z.detach(), za)).backward()
        opt.step()
    epoch_vat = (time.perf_counter() - t) * len(starts) / n_batches
    from bayesclust._device import empty_buffer

    def predictions_into(buf: torch.Tensor) -> None:  # EntropyClustering._predictions_into
        with torch.no_grad():
            for s in range(0, n, 8192):
                buf[s : s + 8192] = model(X[s : s + 8192]).softmax(1)

    buf = empty_buffer(n, k, torch.float32, torch.device("cpu"))  # allocated once per fit
    predictions_into(buf)  # first touch of the buffer, untimed
    t = time.perf_counter()
    predictions_into(buf)
    t_fwd = time.perf_counter() - t
    acc = float((buf.argmax(1) == comp).float().mean())
    # the first pseudo-label step of a fit, as EntropyClustering runs it (lam 1, em_iter 20, tol 1e-6):
    # y is allocated by the solver and initialised from sigma
    t = time.perf_counter()
    em = em_soft_labels(buf, 1.0, max_iter=20)
    t_em = time.perf_counter() - t
    y = em.y
    # a later step: the network trains on (a share of) another epoch, then the step is warm-started
    # from the previous labels, in place (init=out=y), as in EntropyClustering
    train(comp)
    predictions_into(buf)
    t = time.perf_counter()
    warm = em_soft_labels(buf, 1.0, max_iter=20, init=y, out=y)
    t_warm = time.perf_counter() - t
    del y
    def log_in_place(buf: torch.Tensor) -> None:  # sigma -> log sigma, chunk by chunk
        for s in range(0, n, 8192):
            buf[s : s + 8192].clamp_min_(1e-30).log_()

    t = time.perf_counter()
    log_in_place(buf)
    labels, sk = sela_labels(buf, lam=25.0, max_iter=100, tol=1e-2, overwrite=False)
    t_sela = time.perf_counter() - t
    counts = torch.bincount(labels, minlength=k)
    # a later SeLa step as EntropyClustering runs it: warm-started from the last column potential
    # after another share of an epoch of training on the SeLa labels
    train(labels)
    predictions_into(buf)
    t = time.perf_counter()
    log_in_place(buf)
    labels2, sk2 = sela_labels(buf, lam=25.0, max_iter=100, tol=1e-2, overwrite=False, init_log_v=sk.log_v)
    t_sela2 = time.perf_counter() - t
    counts2 = torch.bincount(labels2, minlength=k)

    def pct(x: float) -> str:
        return f"{x / epoch:5.1%} of the epoch, {x / epoch_vat:5.1%} of the VAT epoch"

    print(
        f"N={n} K={k} D={d}; backbone MLP {d}-{hidden}-{hidden}-{k} (ReLU), Adam, batch {batch}\n"
        f"  one training epoch:                {epoch:8.1f} s  ({n_batches} of {len(starts)} batches timed: "
        f"{epoch_measured:.1f} s; train argmax acc after them {acc:.3f})\n"
        f"  one epoch with VAT (same batches): {epoch_vat:8.1f} s\n"
        f"  prediction pass (forward + softmax, N): {t_fwd:6.1f} s  ({pct(t_fwd)})\n"
        f"  EM collision labels, first step:   {t_em:8.2f} s  ({pct(t_em)}; {em.n_iter} iterations, "
        f"{t_em / em.n_iter:.3f} s each incl. the init pass; "
        f"F {em.objective[0]:.4f} -> {em.objective[-1]:.4f})\n"
        f"  EM collision labels, warm step:    {t_warm:8.2f} s  ({pct(t_warm)}; {warm.n_iter} iterations "
        f"after {n_batches} more batches; F {warm.objective[0]:.4f} -> {warm.objective[-1]:.4f})\n"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name in losses:
        ax.errorbar(etas, acc[name].mean(1), yerr=acc[name].std(1), marker="o", capsize=3, label=name)
    ax.set_xlabel("eta (share of resampled labels; targets softened by eta)")
    ax.set_ylabel("test ACC")
    ax.set_title(f"{data}: supervised MLP on noisy soft targets")
    ax.legend()
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "results" / "label_noise.png"
    fig.savefig(out, dpi=120)
    print(f"figure: {out.relative_to(Path(__file__).resolve().parents[1])}")


def main() -> None:
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
    a = ap.parse_args()
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
    side = 28 if a.data == "mnist" else 16
    Ximg = X.reshape(len(X), side, side)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        if not a.no_kmeans:
            t = time.perf_counter()
            rows.setdefault("kmeans", []).append(
                {**evaluate(y, kmeans(X, 10, seed)), "s": time.perf_counter() - t}
            )
        for loss in a.losses.split(","):
            t = time.perf_counter()
            # (N, 1, H, W) images for the CNN, or with --images (the random affine view needs them;
            # linear and MLP heads flatten them)
            Xfit = Ximg[:, None] if a.head == "cnn" or a.images else X
            callbacks = [_epoch_callback(Xfit, y, t, a.budget_min, a.log_epochs, loss, seed)]
            m = EntropyClustering(
                10,
                head=a.head,
                loss=loss,
                hidden=a.hidden,
                max_iter=a.epochs,
                lr=a.lr,
                weight_decay=a.weight_decay,
                lam=a.lam,
                warmup=a.warmup,
                batch_size=a.batch_size,
                aug_weight=a.aug_weight,
                augmentation=a.augmentation,
                vat_eps=a.vat_eps,
                vat_knn=a.vat_knn,
                em_iter=a.em_iter,
                label_predictions=a.label_predictions,
                n_init=a.n_init,
                init_epochs=a.init_epochs,
                fairness=a.fairness,
                random_state=seed,
                callbacks=callbacks,
            )
            pred = m.fit_predict(Xfit)
            rows.setdefault(loss, []).append(
                {**evaluate(y, pred), "s": time.perf_counter() - t, "ep": m.n_iter_}
            )
            if a.confusion:
                print_confusion(y, pred, f"{loss} seed {seed}")
    print(
        f"data={a.data}/{a.split} n={len(X)} head={a.head} epochs<={a.epochs} lr={a.lr} "
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
