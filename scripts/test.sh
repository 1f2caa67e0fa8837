#!/usr/bin/env bash
# Runs every test of the project: the Rust tests, the header check, and the
# C tests through CMake/ctest. Installs the tools it needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CBINDGEN_VERSION=0.29.4

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
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

echo "== Rust tests"
cargo test --workspace --release

echo "== C tests (CMake + ctest)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j 2
ctest --test-dir build --output-on-failure
