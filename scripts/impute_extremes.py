#!/usr/bin/env python3
"""Extremes of multiple-imputation draws against the training data's range.

Needs only NumPy and a release build (`cargo build --release -p
coreflow-cli`); everything goes through the command line:

    python scripts/impute_extremes.py --data real-data --sets digits:100:101,motions:16:626

For every NAME:T:K: `coreflow fit --core-model gaussian` on NAME_train.npy,
the first T matrices of NAME_test.npy lose a seeded 30 % of their entries,
`coreflow impute --draws K` at both levels; over the missing entries of every
draw: the smallest and largest drawn value, the 1e-4 and 1 - 1e-4 quantiles,
the share of drawn values outside the training range, and the share at one of
its ends (censored draws, or values the training data hold there) against the
share of the true missing values at an end. Prints a Markdown table.
"""

import argparse
import os
import subprocess
import tempfile

import numpy as np


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[1]}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(root, "real-data"))
    ap.add_argument("--sets", default="digits:100:101,motions:16:626")
    ap.add_argument("--bin", default=os.path.join(root, "target", "release", "coreflow"))
    ap.add_argument("--missing", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| set | level | training min / max | draws | draws min / max "
          "| quantiles 1e-4 / 1 - 1e-4 | share outside the training range "
          "| share at an end: draws / true values |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sets.split(","):
            name, t, k = spec.split(":")
            t, k = int(t), int(k)
            train = os.path.join(args.data, f"{name}_train.npy")
            x = np.load(train)
            test = np.load(os.path.join(args.data, f"{name}_test.npy"))[:t]
            rng = np.random.default_rng(args.seed)
            missing = rng.random(test.shape) < args.missing
            partial = np.where(missing, np.nan, test)
            part = os.path.join(tmp, f"{name}_partial.npy")
            np.save(part, partial)
            model = os.path.join(tmp, f"{name}.cfm")
            run([args.bin, "fit", "--data", train, "--core-model", "gaussian", "--out", model])
            lo, hi = float(x.min()), float(x.max())
            for level in ("fitted", "observed"):
                out = os.path.join(tmp, f"{name}_{level}.npy")
                run([args.bin, "impute", "--model", model, "--data", part, "--draws", str(k),
                     "--level", level, "--seed", "1", "--out", out])
                d = np.load(out)  # (K, T, m, n)
                v = d[:, missing]
                q = np.quantile(v, [1e-4, 1 - 1e-4])
                outside = np.mean((v < lo) | (v > hi))
                at_end = np.mean((v == lo) | (v == hi))
                truth = test[missing]
                true_end = np.mean((truth == lo) | (truth == hi))
                print(f"| {name} | {level} | {lo:.3g} / {hi:.3g} | {k * t} | "
                      f"{v.min():.3g} / {v.max():.3g} | {q[0]:.3g} / {q[1]:.3g} | {outside:.2g} "
                      f"| {at_end:.2g} / {true_end:.2g} |")


if __name__ == "__main__":
    main()
