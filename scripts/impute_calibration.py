#!/usr/bin/env python3
"""Calibration of multiple imputation (`coreflow impute`) on held-out
matrices with entries missing at random, against the MAP completion plus
Gaussian noise of the fitted level.

Needs only NumPy and a release build (`cargo build --release -p
coreflow-cli`); everything goes through the command line:

    python scripts/impute_calibration.py --data real-data --sets digits,faces \\
        [--synthetic DIR] [--core-model auto] [--missing 0.3] [--draws 100] \\
        [--test 60] [--level fitted|observed|both] [--json impute-calibration.json]

--synthetic DIR takes the sets written by
`cargo run --release --example export_synthetic -- DIR` as well.
For every set NAME (NAME_train.npy, NAME_test.npy):
1. `coreflow fit` on the training set (--core-model, --flow-steps);
2. the first --test test matrices lose a seeded --missing fraction of their
   entries (missing completely at random);
3. `coreflow impute --draws K --level L` (for each --level; `both` runs
   fitted and observed on the same fit) and `coreflow complete` on them;
4. on the missing entries: the coverage of the central 90 % interval of
   the K draws (their 5 % and 95 % quantiles), and of the MAP +- 1.645
   sigma interval (sigma^2 the model's noise variance per entry); the mean
   continuous ranked probability score of the draws (the unbiased "fair"
   estimator, mean |X - y| - sum_{j != k} |X_j - X_k| / (2 K (K - 1))) and
   of N(MAP, sigma^2) (closed form); the root mean squared error of the MAP
   and of the mean of the draws, in units of the test set's entry standard
   deviation.
With --level observed the mean multiplier of sigma^2 over the matrices
(`coreflow impute`'s report) is recorded as level_multiplier.
Prints a table (a row per set and level) and writes everything to --json.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise RuntimeError(f"{what}: exit {p.returncode}: {msg[-1] if msg else ''}")
    return p.stdout


def crps_draws(draws, y):
    """Fair CRPS of the ensemble `draws` (K, ...) for the values `y` (...)."""
    k = draws.shape[0]
    term1 = np.mean(np.abs(draws - y[None]), axis=0)
    s = np.sort(draws, axis=0)
    w = (2 * np.arange(1, k + 1) - k - 1).reshape((k,) + (1,) * (draws.ndim - 1))
    # sum_{j,l} |x_j - x_l| = 2 sum_i (2 i - K - 1) x_(i)
    pair_sum = 2.0 * np.sum(w * s, axis=0)
    return term1 - pair_sum / (2.0 * k * (k - 1))


def crps_normal(mu, sigma, y):
    z = (y - mu) / sigma
    phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2)))
    return sigma * (z * (2 * cdf - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def evaluate(name, train, test, args, tmp):
    b = args.bin
    out = {"set": name}
    tr, te = np.load(train), np.load(test)
    te = te[: args.test]
    out["shape"] = list(te.shape[1:])
    out["train_count"], out["test_count"] = len(tr), len(te)
    model = os.path.join(tmp, f"{name}.cfm")
    cmd = [b, "fit", "--data", train, "--out", model, "--seed", str(args.seed), "--quiet",
           "--core-model", args.core_model]
    if args.flow_steps is not None:
        cmd += ["--flow-steps", str(args.flow_steps)]
    t0 = time.time()
    run(cmd, "fit")
    out["fit_seconds"] = time.time() - t0
    info = json.loads(run([b, "info", "--json", model], "info"))
    out["core_model"] = info["core_model"]
    out["ranks"] = [info["rank_rows"], info["rank_cols"]]
    sigma2 = info["noise_variance"]
    out["noise_variance"] = sigma2
    for k in ("noise_dof", "noise_tail_scale", "noise_profile_spread"):
        if k in info:
            out[k] = info[k]
    rng = np.random.default_rng(args.seed)
    mask = (rng.random(te.shape) >= args.missing).astype(np.uint8)
    y = os.path.join(tmp, f"{name}_y.npy")
    mk = os.path.join(tmp, f"{name}_mask.npy")
    np.save(y, np.ascontiguousarray(te))
    np.save(mk, mask)
    filled = os.path.join(tmp, f"{name}_map.npy")
    run([b, "complete", "--model", model, "--data", y, "--mask", mk, "--out", filled, "--force"],
        "complete")
    mp = np.load(filled)
    miss = mask == 0
    truth = te[miss]
    sigma = math.sqrt(sigma2)
    m = mp[miss]
    scale = float(np.std(te)) or 1.0
    out["missing_entries"] = int(miss.sum())
    out["coverage_map_noise"] = float(np.mean(np.abs(truth - m) <= 1.645 * sigma))
    out["crps_map_noise"] = float(np.mean(crps_normal(m, sigma, truth))) / scale
    out["rmse_map"] = float(np.sqrt(np.mean((m - truth) ** 2))) / scale
    out["interval_width_map_noise"] = 2 * 1.645 * sigma / scale
    rows = []
    levels = ["fitted", "observed"] if args.level == "both" else [args.level]
    for level in levels:
        r = dict(out)
        r["level"] = level
        draws_path = os.path.join(tmp, f"{name}_{level}_draws.npy")
        t0 = time.time()
        text = run([b, "impute", "--model", model, "--data", y, "--mask", mk, "--draws",
                    str(args.draws), "--seed", str(args.seed + 1), "--level", level,
                    "--out", draws_path, "--force"], "impute")
        r["impute_seconds"] = time.time() - t0
        r["impute_report"] = text.strip().splitlines()
        # "multiplier of sigma^2 M on average over the matrices (smallest S)"
        r["level_multiplier"] = 1.0
        for line in r["impute_report"]:
            if "multiplier of sigma^2" in line:
                r["level_multiplier"] = float(line.split("multiplier of sigma^2")[1].split()[0])
        d = np.load(draws_path)[:, miss]
        lo, hi = np.quantile(d, [0.05, 0.95], axis=0)
        r["coverage_draws"] = float(np.mean((truth >= lo) & (truth <= hi)))
        r["crps_draws"] = float(np.mean(crps_draws(d, truth))) / scale
        r["rmse_draw_mean"] = float(np.sqrt(np.mean((d.mean(axis=0) - truth) ** 2))) / scale
        r["interval_width_draws"] = float(np.mean(hi - lo)) / scale
        rows.append(r)
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(root, "real-data"))
    ap.add_argument("--sets", default="digits,faces,motions,patches,solar")
    ap.add_argument("--synthetic", default=None, help="directory of export_synthetic sets")
    ap.add_argument("--bin", default=os.path.join(root, "target", "release", "coreflow"))
    ap.add_argument("--core-model", default="auto")
    ap.add_argument("--flow-steps", type=int, default=None)
    ap.add_argument("--missing", type=float, default=0.3)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--test", type=int, default=60, help="held-out matrices per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--level", choices=("fitted", "observed", "both"), default="fitted",
                    help="`coreflow impute --level`; both: one fit, imputed at each level")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    jobs = []
    if args.synthetic:
        for name in ("blobs", "bands", "waves", "crosshatch"):
            jobs.append((name, os.path.join(args.synthetic, f"{name}_train.npy"),
                         os.path.join(args.synthetic, f"{name}_test.npy")))
    for name in [s for s in args.sets.split(",") if s]:
        jobs.append((name, os.path.join(args.data, f"{name}_train.npy"),
                     os.path.join(args.data, f"{name}_test.npy")))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, train, test in jobs:
            if not (os.path.exists(train) and os.path.exists(test)):
                print(f"{name}: missing {train} or {test}; skipped", file=sys.stderr)
                continue
            try:
                rows = evaluate(name, train, test, args, tmp)
            except RuntimeError as e:
                rows = [{"set": name, "error": str(e)}]
            for r in rows:
                results.append(r)
                print(json.dumps(r), file=sys.stderr)
    cols = ("set", "core_model", "ranks", "level", "level_multiplier", "missing_entries",
            "coverage_draws", "coverage_map_noise", "crps_draws", "crps_map_noise", "rmse_map",
            "rmse_draw_mean")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        if "error" in r:
            print(f"| {r['set']} | error: {r['error']} |")
            continue
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.3f}" if isinstance(v, float) else
                         ("x".join(map(str, v)) if isinstance(v, list) else str(v)))
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
