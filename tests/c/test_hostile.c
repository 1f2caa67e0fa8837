/*
 * Hostile input through the C ABI: every case runs in a child process with
 * a time limit, so a crash (a signal), an abort or a hang fails the case
 * instead of the whole program. The cases are the minimal inputs of the
 * reliability findings:
 *   1. views whose count * rows * cols overflows (fit, metrics, encode,
 *      decode, log_prob, sample);
 *   2. option values that would ask for absurd memory or work;
 *   3. fork after a fit or a load, then fit and load again in the child;
 *   4. crafted model files with correct checksums (huge or non-orthonormal
 *      bases), and finite inputs far outside the geometry: no call returns
 *      COREFLOW_OK with a non-finite value;
 *   5. outputs untouched by a failed call;
 *   7. workspaces smaller than reported, and zero-count calls.
 * Compiled with -std=c99 -Wall -Wextra -Wpedantic -Werror (POSIX for fork).
 */
#define _POSIX_C_SOURCE 200809L
#define TEST_RNG_SEED 0x2545F4914F6CDD1Dull
#include "check.h"

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

enum { N = 48, M = 8, NC = 6, R = 2, S = 2 };

static double train_data[N * M * NC];
static unsigned char *model_image = NULL; /* a fitted flow model, as bytes */
static size_t model_image_len = 0;

static coreflow_matrices view_of(const double *data, size_t count) {
    return c_order_matrices(data, count, M, NC);
}

static coreflow_matrices_mut mut_view_of(double *data, size_t count) {
    return c_order_matrices_mut(data, count, M, NC);
}

/* Views of finding 1: count * rows * cols wraps to 0 (2^32 * 2^32 * 1), or
 * overflows outright (2^60 matrices of 8 x 6). */
static coreflow_matrices wrapping_view(const double *data) {
    coreflow_matrices v = view_of(data, (size_t)1 << 32);
    v.rows = (size_t)1 << 32;
    v.cols = 1;
    v.sample_stride = (ptrdiff_t)1 << 32;
    v.row_stride = 1;
    v.col_stride = 1;
    return v;
}

static void small_fit_options(coreflow_fit_options *o) {
    coreflow_fit_options_init(o);
    o->rank_rows = R;
    o->rank_cols = S;
    o->threads = 1;
    o->flow_steps = 60;
    o->flow_hidden = 16;
    o->flow_layers = 2;
    o->batch_size = 16;
    o->core_model = COREFLOW_CORE_MODEL_FLOW;
    o->holdout_fraction = 0.0;
}

static coreflow_model *load_model(void) {
    coreflow_model *m = NULL;
    coreflow_status st = coreflow_model_from_bytes(model_image, model_image_len, &m);
    CHECK(st == COREFLOW_OK, "from_bytes: %s %s", coreflow_status_name(st),
          coreflow_last_error_message());
    return m;
}

static void *workspace_for(const coreflow_model *m, coreflow_op op, size_t count, size_t *bytes) {
    *bytes = 0;
    coreflow_status st = coreflow_workspace_size(m, op, count, NULL, bytes);
    CHECK(st == COREFLOW_OK, "workspace_size: %s", coreflow_last_error_message());
    return malloc(*bytes + 64);
}

/* ---- finding 1 ---------------------------------------------------------- */

static void case_overflowing_views(void) {
    double small[M * NC] = {0};
    coreflow_matrices wraps = wrapping_view(small);
    coreflow_matrices huge = view_of(small, (size_t)1 << 60);
    coreflow_fit_options o;
    small_fit_options(&o);
    coreflow_model *out = NULL;
    EXPECT_ERROR(coreflow_fit(&wraps, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "train");
    EXPECT_ERROR(coreflow_fit(&huge, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "train");
    CHECK(out == NULL, "fit wrote *out on failure");

    coreflow_matrices real = view_of(train_data, N);
    coreflow_metrics_result res;
    res.struct_size = sizeof res;
    EXPECT_ERROR(coreflow_metrics(&wraps, &real, NULL, &res), COREFLOW_ERR_INVALID_ARGUMENT, "real");
    EXPECT_ERROR(coreflow_metrics(&real, &huge, NULL, &res), COREFLOW_ERR_INVALID_ARGUMENT,
                 "generated");

    coreflow_model *m = load_model();
    if (m == NULL) return;
    size_t bytes;
    void *ws = workspace_for(m, COREFLOW_OP_SAMPLE, 4, &bytes);
    double cores[R * S * 4], lp[4];
    EXPECT_ERROR(coreflow_encode(m, &huge, cores, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT, "input");
    EXPECT_ERROR(coreflow_encode(m, &wraps, cores, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT, "input");
    EXPECT_ERROR(coreflow_log_prob(m, NULL, &huge, lp, NULL, ws, bytes),
                 COREFLOW_ERR_INVALID_ARGUMENT, "input");
    coreflow_matrices_mut hout = mut_view_of(small, (size_t)1 << 60);
    EXPECT_ERROR(coreflow_sample(m, NULL, 1, 0, &hout, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "out");
    EXPECT_ERROR(coreflow_decode(m, cores, &hout, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT, "out");
    free(ws);
    coreflow_model_free(m);
}

/* ---- finding 2 ---------------------------------------------------------- */

static void case_absurd_options(void) {
    coreflow_matrices train = view_of(train_data, N);
    coreflow_model *out = NULL;
    coreflow_fit_options o;

    small_fit_options(&o);
    o.flow_hidden = 1u << 20;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_hidden");
    small_fit_options(&o);
    o.flow_hidden = COREFLOW_MAX_FLOW_HIDDEN;
    o.flow_layers = 8;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_hidden");
    small_fit_options(&o);
    o.subspace_max_iter = UINT32_MAX;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT,
                 "opts->subspace_max_iter");
    small_fit_options(&o);
    o.flow_time_freqs = 1u << 20;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT,
                 "opts->flow_time_freqs");
    small_fit_options(&o);
    o.flow_steps = UINT32_MAX;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_steps");
    small_fit_options(&o);
    o.batch_size = UINT32_MAX;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT, "opts->batch_size");

    /* Within every cap, but terabytes of activations: refused up front. */
    small_fit_options(&o);
    o.flow_hidden = 8192;
    o.flow_layers = 2;
    o.batch_size = COREFLOW_MAX_BATCH_SIZE;
    EXPECT_ERROR(coreflow_fit(&train, &o, &out), COREFLOW_ERR_OUT_OF_MEMORY, "train");

    static unsigned char mask[N * M * NC];
    for (size_t k = 0; k < sizeof mask; k++) mask[k] = (unsigned char)(k % 7 != 0);
    coreflow_matrices masked = train;
    masked.mask = mask;
    small_fit_options(&o);
    o.completion_max_iter = UINT32_MAX;
    EXPECT_ERROR(coreflow_fit(&masked, &o, &out), COREFLOW_ERR_INVALID_ARGUMENT,
                 "opts->completion_max_iter");
    CHECK(out == NULL, "fit wrote *out on failure");

    /* Absurd thread counts are clamped, not honoured. */
    small_fit_options(&o);
    o.threads = UINT32_MAX;
    o.flow_steps = 0;
    o.core_model = COREFLOW_CORE_MODEL_AUTO;
    coreflow_status st = coreflow_fit(&train, &o, &out);
    CHECK(st == COREFLOW_OK, "fit with threads = UINT32_MAX: %s %s", coreflow_status_name(st),
          coreflow_last_error_message());
    coreflow_model_free(out);

    coreflow_model *m = load_model();
    if (m == NULL) return;
    coreflow_sample_options so;
    coreflow_sample_options_init(&so);
    so.steps = UINT32_MAX;
    size_t bytes = 0;
    EXPECT_ERROR(coreflow_workspace_size(m, COREFLOW_OP_SAMPLE, 1, &so, &bytes),
                 COREFLOW_ERR_INVALID_ARGUMENT, "o->steps");
    double one[M * NC];
    coreflow_matrices_mut out1 = mut_view_of(one, 1);
    EXPECT_ERROR(coreflow_sample(m, &so, 1, 0, &out1, NULL, 0), COREFLOW_ERR_INVALID_ARGUMENT,
                 "o->steps");
    coreflow_model_free(m);
}

/* ---- finding 3 ---------------------------------------------------------- */

/* The parent has fitted (threads 1 and 2) and loaded before forking: the
 * child must be able to fit and load again. A hang is caught by the time
 * limit of run_case. */
static void case_fork_after_fit(void) {
    coreflow_matrices train = view_of(train_data, N);
    for (uint32_t threads = 1; threads <= 2; threads++) {
        coreflow_fit_options o;
        small_fit_options(&o);
        o.threads = threads;
        coreflow_model *m = NULL;
        coreflow_status st = coreflow_fit(&train, &o, &m);
        CHECK(st == COREFLOW_OK, "fit in the child (threads %u): %s", (unsigned)threads,
              coreflow_last_error_message());
        coreflow_model_free(m);
    }
    coreflow_model *m = load_model();
    coreflow_model_free(m);
}

/* ---- finding 4 ---------------------------------------------------------- */

static uint32_t crc32_ieee(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

/* A copy of the model image with the first value of section `tag` set to
 * `value` (little-endian IEEE double) and the checksum recomputed. */
static unsigned char *crafted(const char *tag, double value) {
    unsigned char *img = malloc(model_image_len);
    memcpy(img, model_image, model_image_len);
    for (size_t at = 16; at + 12 + 8 <= model_image_len - 4;) {
        uint64_t len = 0;
        for (int b = 7; b >= 0; b--) len = (len << 8) | img[at + 4 + (size_t)b];
        if (memcmp(img + at, tag, 4) == 0) {
            uint64_t bits;
            memcpy(&bits, &value, 8);
            for (int b = 0; b < 8; b++) img[at + 12 + (size_t)b] = (unsigned char)(bits >> (8 * b));
            uint32_t crc = crc32_ieee(img, model_image_len - 4);
            for (int b = 0; b < 4; b++)
                img[model_image_len - 4 + (size_t)b] = (unsigned char)(crc >> (8 * b));
            return img;
        }
        at += 12 + (size_t)len;
    }
    CHECK(0, "section %s not found", tag);
    return img;
}

/* True when every value is finite. */
static int all_finite(const double *x, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (!isfinite(x[k])) return 0;
    return 1;
}

static void case_crafted_models(void) {
    const double huge = 1.7e308;
    const char *tags[] = {"BASU", "BASV", "PRIO"};
    for (size_t t = 0; t < 3; t++) {
        unsigned char *img = crafted(tags[t], huge);
        coreflow_model *m = NULL;
        EXPECT_ERROR(coreflow_model_from_bytes(img, model_image_len, &m), COREFLOW_ERR_FORMAT,
                     "model data");
        CHECK(m == NULL, "from_bytes wrote *out on failure");
        free(img);
    }
    /* Finite but not orthonormal. */
    unsigned char *img = crafted("BASU", 3.0);
    coreflow_model *m = NULL;
    EXPECT_ERROR(coreflow_model_from_bytes(img, model_image_len, &m), COREFLOW_ERR_FORMAT, "BASU");
    free(img);
}

/* Finite inputs far outside the geometry: either COREFLOW_OK with every
 * output finite, or an error with the outputs untouched (finding 5). */
static void case_extreme_inputs(void) {
    coreflow_model *m = load_model();
    if (m == NULL) return;
    enum { K = 3 };
    static double x[K * M * NC];
    const double scale[K] = {1.0, 1e155, 1e300};
    for (size_t i = 0; i < K; i++)
        for (size_t k = 0; k < M * NC; k++) x[i * M * NC + k] = scale[i] * train_data[i * M * NC + k];
    coreflow_matrices in = view_of(x, K);
    size_t bytes;
    void *ws = workspace_for(m, COREFLOW_OP_LOG_PROB, K, &bytes);
    double lp[K], res[K];
    for (size_t j = 0; j < K; j++) lp[j] = res[j] = -12345.0;
    coreflow_status st = coreflow_log_prob(m, NULL, &in, lp, res, ws, bytes);
    if (st == COREFLOW_OK) {
        CHECK(all_finite(lp, K) && all_finite(res, K), "log_prob: OK with a non-finite output");
    } else {
        int untouched = 1;
        for (size_t j = 0; j < K; j++) untouched &= lp[j] == -12345.0 && res[j] == -12345.0;
        CHECK(untouched, "log_prob wrote its outputs and failed (%s)", coreflow_status_name(st));
    }
    /* The residual alone, matrix by matrix: always finite for finite input. */
    for (size_t j = 0; j < K; j++) {
        coreflow_matrices one = view_of(x + j * M * NC, 1);
        double l = -1.0, r = -1.0;
        st = coreflow_log_prob(m, NULL, &one, &l, &r, ws, bytes);
        if (st == COREFLOW_OK)
            CHECK(isfinite(l) && isfinite(r) && r >= 0.0 && r <= 1.0 + 1e-9,
                  "matrix %zu: log_prob %g, residual %g", j, l, r);
        else
            CHECK(l == -1.0 && r == -1.0, "matrix %zu: outputs written on failure", j);
    }
    free(ws);

    ws = workspace_for(m, COREFLOW_OP_ENCODE, K, &bytes);
    double cores[K * R * S];
    for (size_t k = 0; k < K * R * S; k++) cores[k] = -12345.0;
    st = coreflow_encode(m, &in, cores, ws, bytes);
    if (st == COREFLOW_OK) {
        CHECK(all_finite(cores, K * R * S), "encode: OK with a non-finite core");
    } else {
        int untouched = 1;
        for (size_t k = 0; k < K * R * S; k++) untouched &= cores[k] == -12345.0;
        CHECK(untouched, "encode wrote its output and failed");
    }
    free(ws);

    /* Decode of cores too large for finite matrices. */
    ws = workspace_for(m, COREFLOW_OP_DECODE, 2, &bytes);
    double big[2 * R * S], outm[2 * M * NC];
    for (size_t k = 0; k < 2 * R * S; k++) big[k] = k < R * S ? 1.0 : 1.7e308;
    for (size_t k = 0; k < 2 * M * NC; k++) outm[k] = -12345.0;
    coreflow_matrices_mut out2 = mut_view_of(outm, 2);
    st = coreflow_decode(m, big, &out2, ws, bytes);
    if (st == COREFLOW_OK) {
        CHECK(all_finite(outm, 2 * M * NC), "decode: OK with a non-finite value");
    } else {
        int untouched = 1;
        for (size_t k = 0; k < 2 * M * NC; k++) untouched &= outm[k] == -12345.0;
        CHECK(untouched, "decode wrote its output and failed");
    }
    free(ws);

    /* Completion of matrices with huge observed entries. */
    static unsigned char mask[K * M * NC];
    for (size_t k = 0; k < sizeof mask; k++) mask[k] = (unsigned char)(k % 3 != 0);
    coreflow_matrices partial = in;
    partial.mask = mask;
    static double filled[K * M * NC];
    for (size_t k = 0; k < K * M * NC; k++) filled[k] = -12345.0;
    coreflow_matrices_mut fout = mut_view_of(filled, K);
    ws = workspace_for(m, COREFLOW_OP_COMPLETE, K, &bytes);
    st = coreflow_complete(m, &partial, &fout, ws, bytes);
    if (st == COREFLOW_OK) {
        CHECK(all_finite(filled, K * M * NC), "complete: OK with a non-finite value");
    } else {
        int untouched = 1;
        for (size_t k = 0; k < K * M * NC; k++) untouched &= filled[k] == -12345.0;
        CHECK(untouched, "complete wrote its output and failed (%s)", coreflow_status_name(st));
    }
    free(ws);
    coreflow_model_free(m);
}

/* ---- finding 7 ---------------------------------------------------------- */

static void case_workspaces(void) {
    coreflow_model *m = load_model();
    if (m == NULL) return;
    const coreflow_op ops[] = {COREFLOW_OP_SAMPLE, COREFLOW_OP_ENCODE, COREFLOW_OP_DECODE,
                               COREFLOW_OP_LOG_PROB, COREFLOW_OP_COMPLETE};
    enum { K = 3 };
    double x[K * M * NC], y[K * M * NC], cores[K * R * S] = {0}, lp[K];
    memcpy(x, train_data, sizeof x);
    coreflow_matrices in = view_of(x, K);
    coreflow_matrices_mut out = mut_view_of(y, K);
    for (size_t t = 0; t < 5; t++) {
        size_t bytes = 0;
        coreflow_workspace_size(m, ops[t], K, NULL, &bytes);
        CHECK(bytes > 0, "op %d: empty workspace for %d matrices", (int)ops[t], K);
        /* 64-byte aligned, one byte short: must be refused whatever the alignment. */
        void *ws = NULL;
        if (posix_memalign(&ws, 64, bytes) != 0) continue;
        size_t short_bytes = bytes - 1;
        coreflow_status st = COREFLOW_OK;
        switch (ops[t]) {
        case COREFLOW_OP_SAMPLE: st = coreflow_sample(m, NULL, 3, 0, &out, ws, short_bytes); break;
        case COREFLOW_OP_ENCODE: st = coreflow_encode(m, &in, cores, ws, short_bytes); break;
        case COREFLOW_OP_DECODE: st = coreflow_decode(m, cores, &out, ws, short_bytes); break;
        case COREFLOW_OP_LOG_PROB:
            st = coreflow_log_prob(m, NULL, &in, lp, NULL, ws, short_bytes);
            break;
        default: st = coreflow_complete(m, &in, &out, ws, short_bytes); break;
        }
        expect_error(st, COREFLOW_ERR_WORKSPACE, "ws_bytes", __LINE__);
        free(ws);
    }
    /* Zero matrices need no workspace, whatever their strides (NumPy gives
     * empty arrays strides of 0). */
    coreflow_matrices_mut none = mut_view_of(y, 0);
    none.sample_stride = none.row_stride = none.col_stride = 0;
    coreflow_matrices nothing = view_of(x, 0);
    size_t bytes = 1;
    CHECK(coreflow_workspace_size(m, COREFLOW_OP_SAMPLE, 0, NULL, &bytes) == COREFLOW_OK &&
              bytes == 0,
          "sample of 0 matrices reports %zu workspace bytes", bytes);
    coreflow_status st = coreflow_sample(m, NULL, 3, 0, &none, NULL, 0);
    CHECK(st == COREFLOW_OK, "sample of 0 matrices: %s", coreflow_last_error_message());
    st = coreflow_log_prob(m, NULL, &nothing, NULL, NULL, NULL, 0);
    CHECK(st == COREFLOW_OK, "log_prob of 0 matrices: %s", coreflow_last_error_message());
    /* A count whose workspace cannot exist is refused, not wrapped. */
    EXPECT_ERROR(coreflow_workspace_size(m, COREFLOW_OP_SAMPLE, SIZE_MAX / 2, NULL, &bytes),
                 COREFLOW_ERR_INVALID_ARGUMENT, "count");
    coreflow_model_free(m);
}

/* ---- harness ------------------------------------------------------------ */

/* Threads of this process (Linux: /proc/self/task), or -1 when unknown. */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int cases_failed = 0;

/* Runs `body` in a child with `seconds` to finish; a signal (SIGALRM for a
 * hang), an abort or a failed check fails the case. */
static void run_case(const char *name, void (*body)(void), unsigned seconds) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork failed\n", name);
        cases_failed++;
        return;
    }
    if (pid == 0) {
        alarm(seconds);
        body();
        fflush(stderr);
        _exit(failures == 0 ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) status = -1;
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        fprintf(stderr, "FAIL %s: killed by signal %d%s\n", name, sig,
                sig == SIGALRM ? " (hang)" : "");
        cases_failed++;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "FAIL %s: failed checks (exit %d)\n", name,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        cases_failed++;
    } else {
        printf("ok   %s\n", name);
    }
}

int main(void) {
    /* Low-rank training data with a little noise. */
    for (size_t i = 0; i < N; i++) {
        double a = uniform01() - 0.5, b = uniform01() - 0.5, c = uniform01() - 0.5;
        for (size_t r = 0; r < M; r++)
            for (size_t col = 0; col < NC; col++)
                train_data[(i * M + r) * NC + col] =
                    a * sin(0.7 * (double)r) * cos(0.5 * (double)col) +
                    b * cos(0.3 * (double)r) + c * sin(0.9 * (double)col) +
                    0.01 * (uniform01() - 0.5);
    }
    /* The parent fits (threads 1 and 2) and loads before any fork: finding 3
     * is that a child then hangs in its next fit or load. */
    coreflow_matrices train = view_of(train_data, N);
    coreflow_model *model = NULL;
    for (uint32_t threads = 2; threads >= 1; threads--) {
        coreflow_fit_options o;
        small_fit_options(&o);
        o.threads = threads;
        coreflow_model_free(model);
        model = NULL;
        coreflow_status st = coreflow_fit(&train, &o, &model);
        if (st != COREFLOW_OK) {
            fprintf(stderr, "fit: %s %s\n", coreflow_status_name(st), coreflow_last_error_message());
            return 1;
        }
    }
    coreflow_model_to_bytes(model, NULL, 0, &model_image_len);
    model_image = malloc(model_image_len);
    coreflow_model_to_bytes(model, model_image, model_image_len, &model_image_len);
    coreflow_model_free(model);
    coreflow_model_free(load_model());
    /* No thread of the library outlives a fit or a load. */
    int threads_left = thread_count();
    CHECK(threads_left == 1 || threads_left == -1, "%d threads alive after fit and load",
          threads_left);
    if (failures) cases_failed++;

    run_case("1 overflowing views", case_overflowing_views, 60);
    run_case("2 absurd options", case_absurd_options, 120);
    run_case("3 fork after fit and load", case_fork_after_fit, 60);
    run_case("4 crafted model files", case_crafted_models, 60);
    run_case("4/5 extreme inputs: finite outputs or untouched buffers", case_extreme_inputs, 60);
    run_case("7 workspaces", case_workspaces, 60);
    free(model_image);
    if (cases_failed) {
        fprintf(stderr, "%d case(s) failed\n", cases_failed);
        return 1;
    }
    printf("all hostile-input cases passed\n");
    return 0;
}
