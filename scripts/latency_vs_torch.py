#!/usr/bin/env python3
"""Sampling latency of CoreFlow and the PyTorch peer for a few samples per call.

Runs `target/release/examples/sample_latency` (Model::sample of `count`
matrices per call: the flow solve, the Gaussian block and the decoding to
full matrices) and the PyTorch peer's sampler alternately, `--rounds` times,
both pinned with `taskset` to the same core and single-threaded, at the same
network shape (flow dimension, hidden width, 3 layers, 16 time frequencies,
RK4 with 16 steps = 64 evaluations). The peer is
`shared/peers/torch_flow_bench.py`, imported: its `VelocityMLP` and
`integrate` on `count` states, exactly what its `--sample-count count
--solver rk4 --sample-steps 16 --skip-train --threads 1` times (the flow
solve only), here repeated for at least `--min-ms` per repeat so that one
call is timed many times, in wall time and in the calling thread's CPU time.

CoreFlow's side is also timed without decoding (the core model's sampler:
flow solve, Gaussian block, moment matching), the work the peer's sampler
does; that column is the like-for-like ratio, the others are conservative.

Both sides report wall time and thread CPU time per call; on a machine shared
with other jobs the CPU time leaves out the time others held the core.
Prints markdown tables of the medians: ms per call, the ratio peer /
CoreFlow, achieved GFLOP/s (2 x 64 x multiply-adds per sample, the same
count on both sides), and for count = 1 the time the network's weight traffic
needs at the L2 read bandwidth sample_latency measures in the same run
(weights x 4 bytes x 64 evaluations / bandwidth); the single-thread f32 GEMM
peak of the same runs bounds the larger counts. Both rates are taken in
CPU time, like the CPU column they bound.

    cargo build --release --example sample_latency
    python3 scripts/latency_vs_torch.py --python /work/venv-torch/bin/python \\
        --peer ../shared/peers/torch_flow_bench.py [--core 1] [--rounds 3] [--shapes demo,large]
"""

import argparse
import json
import statistics
import subprocess
import sys

# Times the peer's own sampler (torch_flow_bench.VelocityMLP and integrate).
PEER_RUNNER = r"""
import importlib.util, json, statistics, sys, time
spec = importlib.util.spec_from_file_location("torch_flow_bench", sys.argv[1])
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
import torch
d, hidden, layers, freqs, n, repeats, min_ms = map(int, sys.argv[2:9])
torch.set_num_threads(1)
torch.manual_seed(0)
model = peer.VelocityMLP(d, hidden, layers, freqs).eval()
x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
peer.integrate(model, x0, 2, "rk4")  # warm-up
wall, cpu = [], []
for _ in range(repeats):
    t0, c0, calls = time.perf_counter(), time.thread_time(), 0
    while calls == 0 or (time.perf_counter() - t0) * 1e3 < min_ms:
        peer.integrate(model, x0, 16, "rk4")
        calls += 1
    wall.append((time.perf_counter() - t0) / calls)
    cpu.append((time.thread_time() - c0) / calls)
print(json.dumps({"count": n, "wall_ms": 1e3 * statistics.median(wall),
                  "cpu_ms": 1e3 * statistics.median(cpu), "torch": torch.__version__}))
"""


def run(cmd, core):
    out = subprocess.run(["taskset", "-c", str(core)] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", default="../shared/peers/torch_flow_bench.py")
    p.add_argument("--python", default=".venv/bin/python")
    p.add_argument("--bench", default="target/release/examples/sample_latency")
    p.add_argument("--core", type=int, default=1, help="the core both sides are pinned to")
    p.add_argument("--counts", default="1,4,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per side and round")
    p.add_argument("--min-ms", type=int, default=300, help="least duration of one repeat")
    p.add_argument("--shapes", default="demo",
                   help="demo (128 x 128, flow on 12, H = 256), large (200 x 200, flow on 40, "
                        "H = 512) or demo,large")
    p.add_argument("--json-out", default="", help="also write every raw JSON line here")
    a = p.parse_args()

    counts = [int(c) for c in a.counts.split(",")]
    known = {"demo": (128, 8, 12, 256), "large": (200, 8, 40, 512)}
    shapes = [known[s] for s in a.shapes.split(",")]
    raw = []
    for size, rank, k, hidden in shapes:
        ours_ms = {c: [] for c in counts}
        peer_ms = {c: [] for c in counts}
        ours_cpu = {c: [] for c in counts}
        cores_cpu = {c: [] for c in counts}
        peer_cpu = {c: [] for c in counts}
        l2, peak, bound, macs = [], [], [], None
        for rnd in range(a.rounds):
            ours = run([a.bench, "--size", str(size), "--rank", str(rank), "--flow-dim", str(k),
                        "--hidden", str(hidden), "--counts", ",".join(map(str, counts)),
                        "--repeats", str(a.repeats), "--min-ms", str(a.min_ms), "--no-log-prob"], a.core)
            raw.append(ours)
            macs = ours["macs_per_eval"]
            l2.append(ours["l2_read_cpu_gbs"])
            peak.append(ours["gemm_peak_cpu_gflops"])
            for r in ours["results"]:
                ours_ms[r["count"]].append(r["sample_ms_per_call"])
                ours_cpu[r["count"]].append(r["sample_cpu_ms_per_call"])
                cores_cpu[r["count"]].append(r["cores_cpu_ms_per_call"])
                if r["count"] == 1:
                    bound.append(r["weight_traffic_ms"])
            for c in counts:
                peer = run([a.python, "-c", PEER_RUNNER, a.peer, str(k), str(hidden), "3", "16", str(c),
                            str(a.repeats), str(a.min_ms)], a.core)
                raw.append(peer)
                peer_ms[c].append(peer["wall_ms"])
                peer_cpu[c].append(peer["cpu_ms"])
            print(f"round {rnd}: " + ", ".join(
                f"n={c}: {ours_ms[c][-1]:.3f} / {peer_ms[c][-1]:.3f} ms (CPU {ours_cpu[c][-1]:.3f} / "
                f"{peer_cpu[c][-1]:.3f})" for c in counts), file=sys.stderr)
        flop = 2.0 * 64 * macs
        med = statistics.median
        print(f"\n{size} x {size} matrices, flow on {k} components, H = {hidden}, 3 layers, RK4 16 steps; "
              f"core {a.core}, 1 thread, medians of {a.rounds} alternating rounds; "
              f"rates in CPU time: L2 read {med(l2):.0f} GB/s (rounds: {', '.join(f'{v:.0f}' for v in l2)}), "
              f"f32 GEMM peak (faer, 512^3) {med(peak):.0f} GFLOP/s (rounds: "
              f"{', '.join(f'{v:.0f}' for v in peak)})\n")
        print("| count | CoreFlow ms/call: wall (CPU) | torch ms/call: wall (CPU) | torch / CoreFlow: wall "
              "(CPU) | GFLOP/s CoreFlow / torch (CPU time) | CoreFlow / weight traffic at L2: wall (CPU) "
              "| cores only (no decoding): CPU ms, torch / cores |")
        print("|---|---|---|---|---|---|---|")
        for c in counts:
            o, q, oc, qc = med(ours_ms[c]), med(peer_ms[c]), med(ours_cpu[c]), med(peer_cpu[c])
            cc = med(cores_cpu[c])
            b = med(bound)
            traffic = f"{o / b:.2f}x ({oc / b:.2f}x) of {b:.3f} ms" if c == 1 else ""
            print(f"| {c} | {o:.3f} ({oc:.3f}) | {q:.3f} ({qc:.3f}) | {q / o:.1f}x ({qc / oc:.1f}x) | "
                  f"{flop * c / oc / 1e6:.1f} / {flop * c / qc / 1e6:.1f} | {traffic} | "
                  f"{cc:.3f}, {qc / cc:.1f}x |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            for r in raw:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
