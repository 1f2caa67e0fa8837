/*
 * The checking harness shared by the C ABI tests: CHECK counts and reports
 * failed conditions, EXPECT_ERROR checks a status and that the last-error
 * message names the argument, uniform01 is a small seeded xorshift64*
 * source (each test defines TEST_RNG_SEED before including this header).
 * C99; every test is compiled with -Wall -Wextra -Wpedantic -Werror.
 */
#ifndef COREFLOW_TEST_CHECK_H
#define COREFLOW_TEST_CHECK_H

#include "coreflow.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TEST_RNG_SEED
#error "define TEST_RNG_SEED before including check.h"
#endif

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
        }                                                                                  \
    } while (0)

/* Expects status `want` and a last-error message mentioning `arg`. */
static void expect_error(coreflow_status got, coreflow_status want, const char *arg, int line) {
    const char *msg = coreflow_last_error_message();
    checks++;
    if (got != want || msg == NULL || strstr(msg, arg) == NULL) {
        failures++;
        fprintf(stderr, "line %d: expected %s naming '%s', got %s: '%s'\n", line,
                coreflow_status_name(want), arg, coreflow_status_name(got), msg ? msg : "(null)");
    }
}
#define EXPECT_ERROR(call, want, arg) expect_error((call), (want), (arg), __LINE__)

/* Views of `count` C-order matrices of rows x cols at `data` (no mask). */
static inline coreflow_matrices c_order_matrices(const double *data, size_t count, size_t rows,
                                                 size_t cols) {
    coreflow_matrices v;
    v.data = data;
    v.mask = NULL;
    v.count = count;
    v.rows = rows;
    v.cols = cols;
    v.sample_stride = (ptrdiff_t)(rows * cols);
    v.row_stride = (ptrdiff_t)cols;
    v.col_stride = 1;
    return v;
}

static inline coreflow_matrices_mut c_order_matrices_mut(double *data, size_t count, size_t rows,
                                                         size_t cols) {
    coreflow_matrices_mut v;
    v.data = data;
    v.count = count;
    v.rows = rows;
    v.cols = cols;
    v.sample_stride = (ptrdiff_t)(rows * cols);
    v.row_stride = (ptrdiff_t)cols;
    v.col_stride = 1;
    return v;
}

/* xorshift64*: uniform in [0, 1). */
static uint64_t rng_state = TEST_RNG_SEED;
static double uniform01(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
