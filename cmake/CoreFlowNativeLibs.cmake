# coreflow_native_static_libs(<out_var>)
#
# The native libraries a C host must link next to libcoreflow.a: the static
# library embeds the Rust standard library, which needs these from the
# system. rustc reports them for any staticlib (`--print
# native-static-libs`), so an empty crate built at configure time (about
# 0.1 s) gives the list for this toolchain and target. The result is cached
# in COREFLOW_STATIC_NATIVE_LIBS, which a cross build may also preset.
#
# Bare names (`m`) become -l flags in CMake and pkg-config; any other flag
# rustc prints is kept as it is. The c_abi_static test links the real
# archive with this list, so a dependency that adds native libraries which
# the empty crate does not show would fail there rather than at users.
function(coreflow_native_static_libs out_var)
    if(DEFINED COREFLOW_STATIC_NATIVE_LIBS)
        set(${out_var} "${COREFLOW_STATIC_NATIVE_LIBS}" PARENT_SCOPE)
        return()
    endif()

    # What rustc 1.7x-1.9x reports for Linux with glibc; used only when the
    # probe cannot run.
    set(linux_glibc gcc_s util rt pthread m dl c)

    get_filename_component(cargo_dir "${CARGO_EXECUTABLE}" DIRECTORY)
    find_program(RUSTC_EXECUTABLE rustc HINTS "${cargo_dir}")
    set(dir "${CMAKE_CURRENT_BINARY_DIR}/native-libs-probe")
    file(WRITE "${dir}/probe.rs" "")
    set(report "")
    if(RUSTC_EXECUTABLE)
        # Run from the source tree so that rustup picks the toolchain cargo uses.
        execute_process(
            COMMAND "${RUSTC_EXECUTABLE}" --crate-type staticlib --crate-name coreflow_probe
                    --print native-static-libs -o "${dir}/probe.a" "${dir}/probe.rs"
            WORKING_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}"
            RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
        if(rc EQUAL 0 AND "${out}${err}" MATCHES "native-static-libs: ([^\n]*)")
            set(report "${CMAKE_MATCH_1}")
        endif()
    endif()
    file(REMOVE_RECURSE "${dir}")

    set(libs "")
    if(report STREQUAL "")
        message(WARNING "CoreFlow: could not ask rustc for the native libraries of a static "
                        "library; assuming the Linux/glibc list: ${linux_glibc}")
        set(libs ${linux_glibc})
    else()
        separate_arguments(flags UNIX_COMMAND "${report}")
        foreach(flag IN LISTS flags)
            if(flag MATCHES "^-l(.+)$")
                list(APPEND libs "${CMAKE_MATCH_1}")
            else()
                list(APPEND libs "${flag}")
            endif()
        endforeach()
    endif()
    message(STATUS "CoreFlow: native libraries of the static library: ${libs}")
    set(COREFLOW_STATIC_NATIVE_LIBS "${libs}" CACHE STRING
        "Native libraries linked next to libcoreflow.a (from rustc --print native-static-libs)")
    set(${out_var} "${libs}" PARENT_SCOPE)
endfunction()
