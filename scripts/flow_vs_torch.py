#!/usr/bin/env python3
"""Side-by-side speed of CoreFlow's flow kernels and the PyTorch peer.

Runs `target/release/examples/flow_bench` and `shared/peers/torch_flow_bench.py`
back to back (alternating, same shapes, same thread count, both pinned with
`taskset` to the first T cores) for every shape of the flow issue and prints a
markdown table: training optimiser steps/s, samples/s (Euler 100 steps and RK4
25 steps), achieved GFLOP/s, ratios (CoreFlow / peer) and the single-thread
f32 matrix-product peak measured by flow_bench. Sampling GFLOP/s are the
operations each side performs; a CoreFlow figure marked "h" sampled in the
network's hidden coordinates (src/flow/latent.rs), which needs fewer
operations than the peer's count for the same solve.

    cargo build --release --example flow_bench
    .venv/bin/python scripts/flow_vs_torch.py --peer ../shared/peers/torch_flow_bench.py \
        --python .venv/bin/python [--threads 1,2] [--dims 64,400,3600] [--hidden 256,512]
"""

import argparse
import json
import os
import subprocess
import sys


def run(cmd, threads):
    cores = ",".join(str(c) for c in range(threads))
    out = subprocess.run(["taskset", "-c", cores] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", default="../shared/peers/torch_flow_bench.py")
    p.add_argument("--python", default=".venv/bin/python")
    p.add_argument("--bench", default="target/release/examples/flow_bench")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dims", default="64,400,3600")
    p.add_argument("--hidden", default="256,512")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", default="", help="also write every raw JSON line here")
    a = p.parse_args()

    raw = []
    rows = []
    peak = {}
    for threads in [int(t) for t in a.threads.split(",")]:
        for dim in [int(d) for d in a.dims.split(",")]:
            for hidden in [int(h) for h in a.hidden.split(",")]:
                big = dim * hidden >= 1_000_000
                steps = 60 if big else 200
                count = 256 if big else 1000
                common = ["--dim", str(dim), "--hidden", str(hidden), "--layers", str(a.layers),
                          "--batch", str(a.batch), "--threads", str(threads),
                          "--repeats", str(a.repeats)]
                train = common + ["--steps", str(steps), "--warmup", "10", "--sample-count", "0"]
                ours_cmd = [a.bench]
                peer_cmd = [a.python, a.peer]
                res = {"threads": threads, "dim": dim, "hidden": hidden}
                ours = run(ours_cmd + train + (["--matmul-peak"] if threads == 1 and not peak else []), threads)
                if "matmul_gflops" in ours:
                    peak[threads] = ours["matmul_gflops"]
                peer = run(peer_cmd + train, threads)
                raw += [ours, peer]
                res["train"] = (ours["train_steps_per_s"], peer["train_steps_per_s"],
                                ours["train_gflops"], peer["train_gflops"])
                for solver, nsteps in (("euler", 100), ("rk4", 25)):
                    samp = common + ["--skip-train", "--sample-count", str(count),
                                     "--solver", solver, "--sample-steps", str(nsteps)]
                    ours = run(ours_cmd + samp, threads)
                    peer = run(peer_cmd + samp, threads)
                    raw += [ours, peer]
                    hidden = ours.get("coordinates") == "hidden"
                    res[solver] = (ours["sample_per_s"], peer["sample_per_s"],
                                   ours.get("sample_gflops_done", ours["sample_gflops"]),
                                   peer["sample_gflops"], hidden)
                rows.append(res)
                print(json.dumps(res), file=sys.stderr, flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            for r in raw:
                f.write(json.dumps(r) + "\n")
    print(f"f32 matrix-product peak (faer, 1 thread, 1024^3): {peak.get(1, float('nan')):.0f} GFLOP/s")
    print()
    print("| T | d | H | train steps/s CoreFlow / torch (ratio) | GFLOP/s | Euler 100 samples/s (ratio) | GFLOP/s | RK4 25 samples/s (ratio) | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for key in ("train", "euler", "rk4"):
            o, q, og, qg, *h = r[key]
            mark = " h" if h and h[0] else ""
            cells.append(f"{o:.1f} / {q:.1f} ({o / q:.2f}x)")
            cells.append(f"{og:.0f}{mark} / {qg:.0f}")
        print(f"| {r['threads']} | {r['dim']} | {r['hidden']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
