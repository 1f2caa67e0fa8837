#!/usr/bin/env bash
# Runs every test of the project: the header check, formatting and lints,
# a build with the minimum Rust version,
# the API documentation (rustdoc warnings are errors), the Rust tests, the
# C and C++ tests and examples through CMake/ctest (including install,
# pkg-config, valgrind and MPI checks), and the Python package's tests
# (installed with pip into a fresh virtual environment).
# Installs the tools it needs when they are missing: system packages with
# apt-get, cbindgen with cargo, the Python build backend and NumPy with pip.
set -euo pipefail
cd "$(dirname "$0")/.."

CBINDGEN_VERSION=0.29.4

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v readelf >/dev/null 2>&1 || need_apt+=(binutils)
# Open MPI for the examples/mpi tests (the compiler wrapper and the launcher).
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  need_apt+=(libopenmpi-dev openmpi-bin)
fi
# Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi
if ! cbindgen --version 2>/dev/null | grep -q " ${CBINDGEN_VERSION}\$"; then
  echo "== installing cbindgen ${CBINDGEN_VERSION}"
  cargo install cbindgen --version "${CBINDGEN_VERSION}" --locked
fi

echo "== header is current"
tmp=$(mktemp)
cbindgen --config cbindgen.toml --crate coreflow --output "$tmp" 2>/dev/null
if ! diff -u include/coreflow.h "$tmp"; then
  echo "include/coreflow.h is stale: regenerate it with"
  echo "  cbindgen --config cbindgen.toml --crate coreflow --output include/coreflow.h"
  exit 1
fi
rm -f "$tmp"

echo "== formatting and lints"
# rustfmt and clippy are rustup components; a toolchain without them skips
# these checks (they need no network to run, only to be installed).
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "cargo fmt not installed: skipped"
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --release -- -D warnings
else
  echo "cargo clippy not installed: skipped"
fi

echo "== documentation (broken or private intra-doc links, bad HTML: errors)"
# The library's docs; the CLI binary is not documented (cli/Cargo.toml: its
# docs would overwrite the library's, both being named coreflow).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace

echo "== the library builds with its minimum Rust (Cargo.toml rust-version)"
# Installed through rustup when missing and reachable; skipped, not failed,
# without it. Below Rust 1.89 build.rs leaves out the AVX-512 kernels, so
# this also builds the AVX2-only configuration.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
if [ -n "$msrv" ] && ! cargo "+$msrv" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
  rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1 || true
fi
if [ -n "$msrv" ] && cargo "+$msrv" --version >/dev/null 2>&1; then
  RUSTFLAGS="-D warnings" CARGO_TARGET_DIR=target/msrv cargo "+$msrv" build --release --lib --locked
else
  echo "Rust $msrv not installed: skipped"
fi

echo "== Rust tests"
cargo test --workspace --release

echo "== fuzz targets, short runs (need a nightly toolchain and cargo-fuzz)"
# The same probes run in process with the Rust tests (tests/hostile.rs).
# Installed when missing and the toolchain server and crates.io are
# reachable; without them the runs are skipped, not failed.
if ! cargo +nightly --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || true
fi
if cargo +nightly --version >/dev/null 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked >/dev/null 2>&1 || true
fi
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  # Seed inputs (fuzz/seeds/<target>: small valid model files of every
  # core-model kind) start the mutations past the format's header checks;
  # new inputs go to the untracked fuzz/corpus/<target>.
  for target in model_from_bytes views_and_options; do
    mkdir -p "fuzz/corpus/$target"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
      -runs=20000 -max_total_time=60
  done
else
  echo "cargo-fuzz not installed: skipped"
fi

echo "== C and C++ tests, examples, install checks (CMake + ctest)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j 2
ctest --test-dir build --output-on-failure

echo "== Python package: pip install into a fresh virtual environment, tests from outside the tree"
# One release build of the library through the package's build backend
# (setuptools-rust, from PyPI), installed with NumPy into a new venv; the
# tests then import the installed package from a scratch directory. They
# also check the Julia binding (constants, ccall signatures, struct layouts)
# against the header.
root=$(pwd)
pyenv=$(mktemp -d)
trap 'rm -rf "$pyenv"' EXIT
python3 -m venv "$pyenv/venv"
"$pyenv/venv/bin/python" -m pip install --quiet --disable-pip-version-check ./bindings/python
(cd "$pyenv" && env -u COREFLOW_LIB -u PYTHONPATH COREFLOW_TEST_INSTALLED=1 \
  "$pyenv/venv/bin/python" -m unittest discover -s "$root/bindings/python/tests" -v)
