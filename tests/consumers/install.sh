#!/usr/bin/env bash
# Installs CoreFlow from a finished build into scratch prefixes and builds
# the examples against each install the ways a user would, each from a clean
# build directory, then runs them:
#   1. full install: file layout (with the C++ wrapper coreflow.hpp),
#      soname link chain, no debug information in the libraries, CMake
#      package files;
#   2. find_package(CoreFlow) with CMAKE_PREFIX_PATH: the C, C++ and
#      simulator (static) examples, and the C++ example alone against the
#      installed wrapper coreflow.hpp;
#   3. pkg-config --cflags --libs coreflow: the C and C++ examples (the
#      C++ one with the installed coreflow.hpp), shared;
#   4. static-only install (component CoreFlow_Development): pkg-config
#      --static for the C example and the simulator, find_package for the
#      simulator; the executables must not need libcoreflow.so.
#
# usage: install.sh <coreflow source dir> <coreflow build dir> <scratch dir>
# env:   CMAKE, CMAKE_GENERATOR, CC, CXX, PKG_CONFIG (ctest passes the
#        parent build's)
set -euo pipefail
src=$1
build=$2
work=$3
cmake=${CMAKE:-cmake}
cc=${CC:-cc}
cxx=${CXX:-c++}
pkgconfig=${PKG_CONFIG:-pkg-config}
cflags=(-std=c99 -Wall -Wextra -Wpedantic -Werror)
cxxflags=(-std=c++17 -Wall -Wextra -Wpedantic -Werror)

fail() {
    echo "FAILED: $*" >&2
    exit 1
}
# Configures and builds one example against an install, quietly unless it fails.
cmake_example() { # <example> <build dir> <prefix>
    "$cmake" -S "$src/examples/$1" -B "$2" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$3" >"$2.log" 2>&1 || { cat "$2.log"; fail "configure $1"; }
    "$cmake" --build "$2" -j 2 >>"$2.log" 2>&1 || { cat "$2.log"; fail "build $1"; }
    # The package must come from this prefix, not from anywhere else.
    grep -q "^CoreFlow_DIR:PATH=$3/" "$2/CMakeCache.txt" || fail "$1 found CoreFlow outside $3"
}
needs_libcoreflow() { # <executable>: prints the libcoreflow entries it needs
    readelf -d "$1" | grep NEEDED | grep -o 'libcoreflow[^]]*' || true
}

rm -rf "$work"
mkdir -p "$work"

echo "== 1. install into $work/prefix"
prefix=$work/prefix
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log"
pc=$(find "$prefix" -name coreflow.pc)
[ -n "$pc" ] || fail "coreflow.pc not installed"
libdir=$(cd "$(dirname "$pc")/.." && pwd)
[ -f "$prefix/include/coreflow.h" ] || fail "header not installed"
[ -f "$prefix/include/coreflow.hpp" ] || fail "C++ header coreflow.hpp not installed"
[ -f "$libdir/libcoreflow.a" ] || fail "static library not installed"
real=$(cd "$libdir" && ls libcoreflow.so.*.*.*)
[ "$(readlink "$libdir/libcoreflow.so")" = libcoreflow.so.0 ] || fail "libcoreflow.so link"
[ "$(readlink "$libdir/libcoreflow.so.0")" = "$real" ] || fail "libcoreflow.so.0 link"
readelf -d "$libdir/$real" | grep -q 'SONAME.*\[libcoreflow.so.0\]' || fail "soname of $real"
# The installed libraries carry no debug information.
for lib in "$libdir/$real" "$libdir/libcoreflow.a"; do
    if readelf -S "$lib" | grep -q '\.debug_info'; then
        fail "$lib keeps debug information"
    fi
    echo "   $(basename "$lib"): $(wc -c <"$lib") bytes"
done
for f in CoreFlowConfig.cmake CoreFlowConfigVersion.cmake; do
    [ -f "$libdir/cmake/CoreFlow/$f" ] || fail "$f not installed"
done
echo "   $(cd "$prefix" && find . -name '*coreflow*' -o -name 'CoreFlow*' | sort | tr '\n' ' ')"

echo "== 2. find_package(CoreFlow)"
for ex in c cpp simulator; do
    cmake_example "$ex" "$work/find-$ex" "$prefix"
done
[ "$(needs_libcoreflow "$work/find-c/coreflow_example_c")" = libcoreflow.so.0 ] ||
    fail "the C example does not record the soname"
"$work/find-c/coreflow_example_c"
"$work/find-cpp/coreflow_example_cpp"
"$work/find-simulator/coreflow_simulator"
# The C++ example alone (no coreflow.hpp beside it, no source tree on the
# include path): it compiles only with the installed wrapper.
mkdir -p "$work/cpp-installed"
cp "$src/examples/cpp/main.cpp" "$work/cpp-installed/"
cat >"$work/cpp-installed/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(installed_cpp LANGUAGES CXX)
find_package(CoreFlow 0.1 REQUIRED COMPONENTS shared)
add_executable(installed_cpp main.cpp)
set_target_properties(installed_cpp PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
target_compile_options(installed_cpp PRIVATE -Wall -Wextra -Wpedantic -Werror)
target_link_libraries(installed_cpp PRIVATE CoreFlow::coreflow)
CMAKE
"$cmake" -S "$work/cpp-installed" -B "$work/find-cpp-installed" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" >"$work/find-cpp-installed.log" 2>&1 &&
    "$cmake" --build "$work/find-cpp-installed" >>"$work/find-cpp-installed.log" 2>&1 ||
    { cat "$work/find-cpp-installed.log"; fail "C++ example against the installed coreflow.hpp"; }
"$work/find-cpp-installed/installed_cpp"

echo "== 3. pkg-config, shared"
export PKG_CONFIG_PATH=$(dirname "$pc")
echo "   cflags/libs: $("$pkgconfig" --cflags --libs coreflow)"
rpath=-Wl,-rpath,$("$pkgconfig" --variable=libdir coreflow)
# shellcheck disable=SC2046 # pkg-config output is meant to be split
"$cc" "${cflags[@]}" -o "$work/pc-c" "$src/examples/c/example.c" \
    $("$pkgconfig" --cflags --libs coreflow) -lm "$rpath"
# shellcheck disable=SC2046
"$cxx" "${cxxflags[@]}" -o "$work/pc-cpp" "$work/cpp-installed/main.cpp" \
    $("$pkgconfig" --cflags --libs coreflow) "$rpath"
"$work/pc-c"
"$work/pc-cpp"

echo "== 4. static-only install into $work/static-prefix"
sprefix=$work/static-prefix
"$cmake" --install "$build" --prefix "$sprefix" --component CoreFlow_Development >"$work/install-static.log"
if find "$sprefix" -name 'libcoreflow.so*' | grep -q .; then
    fail "the development component installed the shared library"
fi
export PKG_CONFIG_PATH=$(dirname "$(find "$sprefix" -name coreflow.pc)")
echo "   static cflags/libs: $("$pkgconfig" --static --cflags --libs coreflow)"
# shellcheck disable=SC2046
"$cc" "${cflags[@]}" -o "$work/pc-static-c" "$src/examples/c/example.c" \
    $("$pkgconfig" --static --cflags --libs coreflow)
# shellcheck disable=SC2046
"$cc" "${cflags[@]}" -o "$work/pc-static-sim" "$src/examples/simulator/simulator.c" \
    "$src/examples/simulator/alloc_counter.c" $("$pkgconfig" --static --cflags --libs coreflow)
cmake_example simulator "$work/find-static-simulator" "$sprefix"
for exe in pc-static-c pc-static-sim find-static-simulator/coreflow_simulator; do
    [ -z "$(needs_libcoreflow "$work/$exe")" ] || fail "$exe needs the shared library"
    "$work/$exe"
done
echo "== all install consumers passed"
