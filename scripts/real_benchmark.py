#!/usr/bin/env python3
"""Real-data benchmark: drives the release `coreflow` binary on the sets of
scripts/export_real_data.py and compares the core-model kinds with a plain
full-covariance Gaussian on all training cores.

Needs only NumPy (e.g. the .venv-real of export_real_data.py) and a release
build (`cargo build --release -p coreflow-cli`). Everything goes through the
command line, so the script does not depend on the library's internals:

    .venv-real/bin/python scripts/real_benchmark.py [--data real-data] \\
        [--bin target/release/coreflow] [--json real-benchmark.json]

For every set NAME (NAME_train.npy, NAME_test.npy in --data) and every
method:
- auto      `coreflow fit` with the default options (core model AUTO);
- KIND      the same with `--core-model KIND`, for every kind that
            `coreflow fit --help` lists besides auto (today flow and gaussian;
            a mixture kind is picked up when the binary has one);
- gauss-all the baseline: the training cores under the AUTO model's
            geometry (`coreflow encode`), their mean and full (ddof 1)
            covariance fitted in NumPy, cores drawn from that Gaussian and
            mapped back with `coreflow decode`;
- train     the floor: the training set itself scored as if generated (its
            closest-record ratio is 0 by construction).
it records the fit time (wall clock of `coreflow fit`; for gauss-all the
AUTO fit's geometry is reused, so only the NumPy fit is timed), draws as many
matrices as the test set holds (seed --seed) and scores them with
`coreflow eval --real test --generated samples --train train --json`
(MMD^2, 1-NN accuracy, SVE, closest-record ratio), and draws --draws more
matrices in chunks (another seed) for the magnitude check: max |x| over
the draws divided by max |x| of the training set, and the count of
non-finite draws. A failing step is recorded with its message and the run
goes on. Prints one table per set and writes everything to --json.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np


def run(cmd, what):
    """Runs a command; returns stdout or raises RuntimeError with stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise RuntimeError(f"{what}: exit {p.returncode}: {msg[-1] if msg else ''}")
    return p.stdout


def core_model_kinds(binary):
    """The --core-model values that `coreflow fit --help` lists, auto first."""
    text = run([binary, "fit", "--help"], "fit --help")
    m = re.search(r"--core-model <[^>]*>(.*?)(?:\n\s*\n\s*--|\Z)", text, flags=re.S)
    if not m:
        return ["auto"]
    kinds = re.findall(r"^\s*-\s+([a-z][a-z0-9-]*):", m.group(1), flags=re.M)
    if not kinds:  # the short help form: [possible values: a, b, c]
        pv = re.search(r"\[possible values: ([^\]]*)\]", m.group(1))
        kinds = [k.strip() for k in pv.group(1).split(",")] if pv else []
    return ["auto"] + [k for k in kinds if k != "auto"]


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform()}


class Bench:
    def __init__(self, args, work):
        self.a = args
        self.bin = args.bin
        self.work = work

    def path(self, *parts):
        return os.path.join(self.work, "_".join(parts))

    def evaluate(self, test, gen, train):
        out = run([self.bin, "eval", "--real", test, "--generated", gen, "--train", train,
                   "--json", "--threads", str(self.a.threads)], "eval")
        return json.loads(out)

    def sample(self, model, count, seed, first, out):
        run([self.bin, "sample", "--model", model, "--count", str(count), "--seed", str(seed),
             "--first-index", str(first), "--threads", str(self.a.threads), "--out", out],
            "sample")

    def magnitude(self, draw_chunk, max_train):
        """max |x| over --draws draws (in chunks) / max |x_train|, and the
        number of draws with a non-finite entry."""
        total, chunk = self.a.draws, self.a.chunk
        biggest, bad, first = 0.0, 0, 0
        while first < total:
            k = min(chunk, total - first)
            x = draw_chunk(first, k)
            finite = np.isfinite(x).reshape(k, -1).all(axis=1)
            bad += int((~finite).sum())
            if finite.any():
                biggest = max(biggest, float(np.abs(x[finite]).max()))
            first += k
        return {"max_abs_ratio": biggest / max_train, "nonfinite_draws": bad,
                "draws": total}

    def model_row(self, name, kind, train, test, n_test, max_train):
        row = {"method": kind}
        model = self.path(name, kind + ".cfm")
        cmd = [self.bin, "fit", "--data", train, "--out", model, "-q",
               "--seed", str(self.a.seed), "--threads", str(self.a.threads)]
        if kind != "auto":
            cmd += ["--core-model", kind]
        t0 = time.perf_counter()
        run(cmd, "fit")
        row["fit_seconds"] = time.perf_counter() - t0
        row["info"] = json.loads(run([self.bin, "info", "--json", model], "info"))
        gen = self.path(name, kind, "gen.npy")
        self.sample(model, n_test, self.a.seed + 1, 0, gen)
        row["metrics"] = self.evaluate(test, gen, train)
        os.remove(gen)

        def chunk(first, k):
            p = self.path(name, kind, "draws.npy")
            self.sample(model, k, self.a.seed + 2, first, p)
            x = np.load(p)
            os.remove(p)
            return x

        if self.a.draws > 0:
            row["magnitude"] = self.magnitude(chunk, max_train)
        return row

    def gauss_all_row(self, name, train, test, n_test, max_train):
        """Full-covariance Gaussian on all training cores, in the AUTO
        model's geometry."""
        row = {"method": "gauss-all"}
        model = self.path(name, "auto.cfm")
        cores_p = self.path(name, "train_cores.npy")
        run([self.bin, "encode", "--model", model, "--data", train, "--out", cores_p], "encode")
        cores = np.load(cores_p)
        os.remove(cores_p)
        n, r, s = cores.shape
        t0 = time.perf_counter()
        z = cores.reshape(n, r * s)
        mean = z.mean(axis=0)
        cov = np.atleast_2d(np.cov(z, rowvar=False, ddof=1))
        # A symmetric square root that tolerates a singular covariance.
        w, q = np.linalg.eigh(cov)
        root = q * np.sqrt(np.clip(w, 0.0, None))
        row["fit_seconds"] = time.perf_counter() - t0
        row["info"] = {"core_dim": r * s, "rank_rows": r, "rank_cols": s,
                       "covariance_rank": int((w > w.max() * 1e-12).sum())}

        def draw(k, seed_offset, first):
            rng = np.random.default_rng([self.a.seed, seed_offset, first])
            c = (mean + rng.standard_normal((k, r * s)) @ root.T).reshape(k, r, s)
            cp = self.path(name, "gauss-all", "cores.npy")
            xp = self.path(name, "gauss-all", "x.npy")
            np.save(cp, c)
            run([self.bin, "decode", "--model", model, "--cores", cp, "--out", xp], "decode")
            x = np.load(xp)
            os.remove(cp)
            os.remove(xp)
            return x

        gen = self.path(name, "gauss-all", "gen.npy")
        np.save(gen, draw(n_test, 1, 0))
        row["metrics"] = self.evaluate(test, gen, train)
        os.remove(gen)
        if self.a.draws > 0:
            row["magnitude"] = self.magnitude(lambda first, k: draw(k, 2, first), max_train)
        return row

    def one_set(self, name, kinds):
        train = os.path.join(self.a.data, f"{name}_train.npy")
        test = os.path.join(self.a.data, f"{name}_test.npy")
        xt = np.load(train)
        n_test = np.load(test, mmap_mode="r").shape[0]
        max_train = float(np.abs(xt).max())
        res = {"name": name, "train_shape": list(xt.shape), "test_count": n_test,
               "max_abs_train": max_train, "rows": []}
        del xt
        for kind in kinds:
            try:
                res["rows"].append(self.model_row(name, kind, train, test, n_test, max_train))
            except RuntimeError as e:
                res["rows"].append({"method": kind, "error": str(e)})
            print(f"  {name}: {kind} done", file=sys.stderr, flush=True)
        try:
            res["rows"].append(self.gauss_all_row(name, train, test, n_test, max_train))
        except RuntimeError as e:
            res["rows"].append({"method": "gauss-all", "error": str(e)})
        try:
            res["rows"].append({"method": "train", "metrics": self.evaluate(test, train, train)})
        except RuntimeError as e:
            res["rows"].append({"method": "train", "error": str(e)})
        return res


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(res):
    shape = res["train_shape"]
    lines = [f"## {res['name']}: {shape[0]} train / {res['test_count']} test matrices of "
             f"{shape[1]} x {shape[2]}",
             "",
             "| method | fit s | MMD^2 | 1-NN acc | SVE | DCR | max abs / train (draws) | core model |",
             "|---|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        if "error" in row:
            lines.append(f"| {row['method']} | error: {row['error']} | | | | | | |")
            continue
        m = row.get("metrics", {})
        mag = row.get("magnitude")
        magtxt = "-"
        if mag:
            magtxt = f"{mag['max_abs_ratio']:.3g}"
            if mag["nonfinite_draws"]:
                magtxt += f" ({mag['nonfinite_draws']} non-finite)"
            magtxt += f" ({mag['draws']})"
        info = row.get("info", {})
        if row["method"] == "gauss-all":
            cm = f"Gaussian, {info.get('core_dim')} dims (cov rank {info.get('covariance_rank')})"
        elif row["method"] == "train":
            cm = "training set (floor)"
        else:
            cm = f"{info.get('core_model')}, ranks {info.get('rank_rows')}x{info.get('rank_cols')}"
            if info.get("has_flow"):
                cm += f", flow dim {info.get('flow_dim')}"
        lines.append(
            f"| {row['method']} | {fmt(row.get('fit_seconds'), '.2f')} | "
            f"{fmt(m.get('mmd2'), '.3e')} | {fmt(m.get('nn_accuracy'), '.3f')} | "
            f"{fmt(m.get('sve'), '.3f')} | {fmt(m.get('dcr_ratio'), '.3f')} | {magtxt} | {cm} |")
    return "\n".join(lines)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(root, "real-data"),
                    help="directory of NAME_train.npy / NAME_test.npy (default real-data/)")
    ap.add_argument("--bin", default=os.path.join(root, "target", "release", "coreflow"),
                    help="the coreflow binary (default target/release/coreflow)")
    ap.add_argument("--json", default="real-benchmark.json", help="where to write the results")
    ap.add_argument("--sets", default="", help="comma-separated set names (default: all found)")
    ap.add_argument("--kinds", default="",
                    help="comma-separated methods to fit (default: auto and every kind of --help)")
    ap.add_argument("--draws", type=int, default=100000,
                    help="draws per model for the magnitude check (0 = skip)")
    ap.add_argument("--chunk", type=int, default=10000, help="draws per sampling call")
    ap.add_argument("--seed", type=int, default=0, help="fit seed; sampling uses seed+1, seed+2")
    ap.add_argument("--threads", type=int, default=0, help="worker threads (0 = all cores)")
    ap.add_argument("--work", default="", help="scratch directory (default: a temporary one)")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        ap.error(f"--bin: {a.bin} is not an executable; build it with "
                 "`cargo build --release -p coreflow-cli`")
    if a.draws < 0 or a.chunk < 1:
        ap.error("--draws must be >= 0 and --chunk >= 1")
    found = sorted(f[:-len("_train.npy")] for f in os.listdir(a.data) if f.endswith("_train.npy"))
    sets = [s for s in a.sets.split(",") if s] or found
    missing = [s for s in sets if s not in found]
    if missing:
        ap.error(f"--sets: no {missing} in {a.data} (found {found})")
    all_kinds = core_model_kinds(a.bin)
    kinds = [k for k in a.kinds.split(",") if k] or all_kinds
    bad = [k for k in kinds if k not in all_kinds]
    if bad:
        ap.error(f"--kinds: {bad} not offered by {a.bin} ({all_kinds})")

    version = run([a.bin, "--version"], "--version").strip()
    out = {"binary": a.bin, "version": version, "machine": machine(), "kinds": kinds,
           "draws": a.draws, "seed": a.seed, "sets": []}
    work_ctx = tempfile.TemporaryDirectory(prefix="coreflow-real-") if not a.work else None
    work = a.work or work_ctx.name
    os.makedirs(work, exist_ok=True)
    try:
        bench = Bench(a, work)
        for name in sets:
            res = bench.one_set(name, kinds)
            out["sets"].append(res)
            print(table(res) + "\n", flush=True)
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    print(f"machine: {out['machine']['nproc']} x {out['machine']['cpu']}; results in {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
