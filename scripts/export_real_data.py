#!/usr/bin/env python3
"""Exports real data sets that ship inside Python packages to .npy files.

Every set comes from data files installed with a PyPI package; nothing is
downloaded at run time (no hub, no fetcher). The script installs nothing
itself; set up its environment once with

    python3 -m venv .venv-real
    .venv-real/bin/pip install numpy scikit-learn scikit-image aeon pvlib

and run

    .venv-real/bin/python scripts/export_real_data.py [OUT_DIR]

(OUT_DIR defaults to real-data/, which git ignores). Each set NAME is split
into a training and a test part with a fixed seed (80 / 20, shuffled) and
written as float64 arrays of shape (N, m, n) in C order:

    OUT_DIR/NAME_train.npy, OUT_DIR/NAME_test.npy

plus OUT_DIR/manifest.json with the shapes, sources and preprocessing.

Sets (m x n matrices):
- digits     8 x 8     scikit-learn's handwritten digits (all 1797), / 16.
- faces      25 x 25   scikit-image's bundled LFW subset (200 faces, in [0, 1]).
- patches    16 x 16   1500 patches of scikit-image's bundled grayscale sample
                       images (camera, coins, moon, page, text, brick, grass,
                       gravel), in [0, 1], at seeded random positions.
- motions    6 x 100   aeon's BasicMotions (80 recordings: 3-axis accelerometer
                       and gyroscope, 100 time points), train and test pooled
                       before the split.
- solar      6 x 24    one matrix per day (GHI, DNI, DHI, air temperature, wind
                       speed, relative humidity over 24 hours) from pvlib's three
                       bundled typical-meteorological-year files (TMY3 Greensboro
                       NC and Sand Point AK, TMY2 Miami FL): 1095 days; every
                       variable standardised by its training-set mean and
                       standard deviation.
"""

import argparse
import json
import os
import sys

import numpy as np

SEED = 20261204
TRAIN_FRACTION = 0.8


def split(x, seed):
    """Shuffled 80 / 20 split of the first axis with a fixed seed."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(x.shape[0])
    k = int(round(TRAIN_FRACTION * x.shape[0]))
    return x[perm[:k]], x[perm[k:]]


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()  # reads sklearn/datasets/data/digits.csv.gz
    x = d.images.astype(np.float64) / 16.0
    return x, "scikit-learn load_digits (bundled digits.csv.gz), divided by 16"


def faces():
    import skimage.data

    path = os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy")
    x = np.load(path).astype(np.float64)
    return x, "scikit-image skimage/data/lfw_subset.npy (bundled LFW subset)"


PATCH_IMAGES = ["camera", "coins", "moon", "page", "text", "brick", "grass", "gravel"]


def patches(size=16, count=1500, seed=SEED + 1):
    import skimage.data
    import skimage.io

    data_dir = os.path.dirname(skimage.data.__file__)
    rng = np.random.default_rng(seed)
    images = []
    for name in PATCH_IMAGES:
        path = os.path.join(data_dir, name + ".png")
        if not os.path.exists(path):
            raise SystemExit(f"patches: {path} is not in the installed scikit-image")
        img = skimage.io.imread(path)
        if img.ndim != 2:
            raise SystemExit(f"patches: {name}.png is not grayscale")
        images.append(img.astype(np.float64) / 255.0)
    per = [count // len(images) + (1 if i < count % len(images) else 0) for i in range(len(images))]
    out = []
    for img, k in zip(images, per):
        h, w = img.shape
        rows = rng.integers(0, h - size + 1, size=k)
        cols = rng.integers(0, w - size + 1, size=k)
        out.extend(img[r:r + size, c:c + size] for r, c in zip(rows, cols))
    x = np.stack(out)
    return x, (f"{count} patches of {size} x {size} from scikit-image's bundled "
               f"{', '.join(p + '.png' for p in PATCH_IMAGES)}, / 255, seed {seed}")


def motions():
    from aeon.datasets import load_basic_motions

    xs = []
    for part in ("train", "test"):
        x, _ = load_basic_motions(split=part)  # aeon/datasets/data/BasicMotions
        xs.append(np.asarray(x, dtype=np.float64))
    x = np.concatenate(xs)
    return x, "aeon load_basic_motions (bundled .ts files), train and test pooled"


SOLAR_VARS = ["ghi", "dni", "dhi", "temp_air", "wind_speed", "relative_humidity"]


def _solar_frames():
    import pvlib
    from pvlib.iotools import read_tmy2, read_tmy3

    data_dir = os.path.join(os.path.dirname(pvlib.__file__), "data")
    frames = []
    for name in ("723170TYA.CSV", "703165TY.csv"):
        df, _ = read_tmy3(os.path.join(data_dir, name), map_variables=True)
        frames.append((name, df))
    df, _ = read_tmy2(os.path.join(data_dir, "12839.tm2"))
    rename = {"GHI": "ghi", "DNI": "dni", "DHI": "dhi", "DryBulb": "temp_air",
              "Wspd": "wind_speed", "RHum": "relative_humidity"}
    df = df.rename(columns={k: v for k, v in rename.items() if k in df.columns})
    frames.append(("12839.tm2", df))
    return frames


def solar():
    mats = []
    for name, df in _solar_frames():
        missing = [v for v in SOLAR_VARS if v not in df.columns]
        if missing:
            raise SystemExit(f"solar: {name} lacks the columns {missing}")
        v = df[SOLAR_VARS].to_numpy(dtype=np.float64)
        if v.shape[0] != 8760:
            raise SystemExit(f"solar: {name} has {v.shape[0]} hours, not 8760")
        # (365 days, 24 hours, 6 variables) -> (days, variables, hours)
        mats.append(v.reshape(365, 24, len(SOLAR_VARS)).transpose(0, 2, 1))
    x = np.concatenate(mats)
    return x, ("pvlib bundled TMY files 723170TYA.CSV, 703165TY.csv (TMY3), 12839.tm2 (TMY2): "
               "one (variable x hour) matrix per day; variables standardised with training-set "
               "mean and standard deviation")


def standardise_rows(train, test):
    """Per-variable (row) standardisation with the training set's statistics."""
    mean = train.mean(axis=(0, 2), keepdims=True)
    std = train.std(axis=(0, 2), keepdims=True)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


SETS = {
    "digits": digits,
    "faces": faces,
    "patches": patches,
    "motions": motions,
    "solar": solar,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default="real-data",
                    help="where to write NAME_train.npy and NAME_test.npy (default real-data/)")
    ap.add_argument("--sets", default=",".join(SETS),
                    help=f"comma-separated subset of {','.join(SETS)}")
    args = ap.parse_args()
    names = [s for s in args.sets.split(",") if s]
    unknown = [s for s in names if s not in SETS]
    if unknown:
        ap.error(f"--sets: unknown {unknown}; choose from {list(SETS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    manifest = {"seed": SEED, "train_fraction": TRAIN_FRACTION, "sets": {}}
    for name in names:
        x, source = SETS[name]()
        if x.ndim != 3 or not np.isfinite(x).all():
            raise SystemExit(f"{name}: expected finite (N, m, n) data, got shape {x.shape}")
        train, test = split(x, SEED + 100 + list(SETS).index(name))
        if name == "solar":
            train, test = standardise_rows(train, test)
        for part, arr in (("train", train), ("test", test)):
            np.save(os.path.join(args.out_dir, f"{name}_{part}.npy"),
                    np.ascontiguousarray(arr, dtype=np.float64))
        manifest["sets"][name] = {
            "train": list(train.shape), "test": list(test.shape), "source": source,
            "max_abs_train": float(np.abs(train).max()),
        }
        print(f"{name:8s} train {train.shape}  test {test.shape}  {source}")
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
