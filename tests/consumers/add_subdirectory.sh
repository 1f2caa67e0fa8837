#!/usr/bin/env bash
# Builds each example project on its own, from a clean build directory, with
# CoreFlow pulled in through add_subdirectory(<source dir>)
# (-DCOREFLOW_SOURCE_DIR), and runs it. cargo uses the source tree's target
# directory, so the library is not rebuilt.
#
# usage: add_subdirectory.sh <coreflow source dir> <scratch dir>
# env:   CMAKE, CMAKE_GENERATOR, CC, CXX (set by ctest to the parent build's)
set -euo pipefail
src=$1
work=$2
cmake=${CMAKE:-cmake}

rm -rf "$work"
mkdir -p "$work"
for ex in c cpp simulator; do
    echo "== examples/$ex through add_subdirectory"
    "$cmake" -S "$src/examples/$ex" -B "$work/$ex" -DCMAKE_BUILD_TYPE=Release \
        -DCOREFLOW_SOURCE_DIR="$src" >"$work/$ex.configure.log"
    "$cmake" --build "$work/$ex" -j 2 >"$work/$ex.build.log" || {
        cat "$work/$ex.build.log"
        exit 1
    }
done
"$work/c/coreflow_example_c"
"$work/cpp/coreflow_example_cpp"
"$work/simulator/coreflow_simulator"
