/*
 * CoreFlow from C: fit a model to a small synthetic set, print its summary,
 * and check that encoding and decoding reproduces the data.
 *
 * The program fits one model, then runs a list of steps on it (`steps` in
 * main). Each step reads the model, prints what it did and returns 0 on
 * success, so a new capability of the library is one more function and one
 * more line in that list.
 *
 * Build: see CMakeLists.txt next to this file, or
 *   cc -std=c99 example.c $(pkg-config --cflags --libs coreflow) -lm
 */
#include "coreflow.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints the failed call with the library's status name and message. */
static int report(const char *what, coreflow_status status) {
    fprintf(stderr, "%s failed: %s: %s\n", what, coreflow_status_name(status),
            coreflow_last_error_message());
    return 1;
}
#define TRY(call)                                                      \
    do {                                                               \
        coreflow_status try_status_ = (call);                          \
        if (try_status_ != COREFLOW_OK) return report(#call, try_status_); \
    } while (0)

/* The training set: `count` matrices of rows x cols, NumPy C-order
 * (count, rows, cols), i.e. element (i, r, c) at ((i * rows) + r) * cols + c. */
typedef struct dataset {
    double *x;
    size_t count, rows, cols;
} dataset;

static coreflow_matrices view_of(const dataset *d, size_t count) {
    coreflow_matrices v;
    v.data = d->x;
    v.mask = NULL; /* every entry observed */
    v.count = count;
    v.rows = d->rows;
    v.cols = d->cols;
    v.sample_stride = (ptrdiff_t)(d->rows * d->cols);
    v.row_stride = (ptrdiff_t)d->cols;
    v.col_stride = 1;
    return v;
}

/* A small seeded generator (xorshift64*), so every run sees the same data. */
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static double uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* Smooth fields on a grid: a few separable waves with random amplitudes
 * around a fixed mean pattern, plus a little noise. Low rank by design. */
static dataset make_data(size_t count, size_t rows, size_t cols) {
    dataset d;
    d.count = count;
    d.rows = rows;
    d.cols = cols;
    d.x = malloc(count * rows * cols * sizeof *d.x);
    if (d.x == NULL) return d;
    for (size_t i = 0; i < count; i++) {
        double a[3];
        for (int k = 0; k < 3; k++) a[k] = 2.0 * uniform() - 1.0;
        for (size_t r = 0; r < rows; r++) {
            double y = (double)r / (double)rows;
            for (size_t c = 0; c < cols; c++) {
                double t = (double)c / (double)cols;
                double v = 1.0 + 0.5 * y * t                         /* mean pattern */
                           + a[0] * sin(3.14159 * y) * cos(6.28318 * t)
                           + a[1] * sin(6.28318 * y) * sin(3.14159 * t)
                           + 0.5 * a[2] * cos(3.14159 * y) * cos(12.566 * t)
                           + 1e-3 * (uniform() - 0.5);
                d.x[(i * rows + r) * cols + c] = v;
            }
        }
    }
    return d;
}

static int print_info(const coreflow_model *model, const dataset *data) {
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    TRY(coreflow_model_get_info(model, &info));
    (void)data;
    printf("model: %zu x %zu matrices, ranks %zu x %zu (core dimension %zu)\n", info.rows,
           info.cols, info.rank_rows, info.rank_cols, info.core_dim);
    printf("       trained on %zu, centered %d, explained energy %.6f\n", info.train_count,
           info.centered, info.explained_energy);
    printf("       subspace: %u iterations, converged %d\n", info.subspace_iterations,
           info.subspace_converged);
    return 0;
}

/* Encodes a batch to its cores and decodes it back with one workspace sized
 * for both operations. The reconstruction error is the part of the data
 * outside the subspaces (the noise here); re-encoding the reconstruction
 * must give the same cores (a projection is idempotent). */
static int round_trip(const coreflow_model *model, const dataset *data) {
    enum { BATCH = 8 };
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    TRY(coreflow_model_get_info(model, &info));

    size_t enc_bytes = 0, dec_bytes = 0;
    TRY(coreflow_workspace_size(model, COREFLOW_OP_ENCODE, BATCH, NULL, &enc_bytes));
    TRY(coreflow_workspace_size(model, COREFLOW_OP_DECODE, BATCH, NULL, &dec_bytes));
    size_t ws_bytes = enc_bytes > dec_bytes ? enc_bytes : dec_bytes;
    size_t n = data->rows * data->cols;
    void *ws = malloc(ws_bytes > 0 ? ws_bytes : 1);
    double *cores = malloc(2 * BATCH * info.core_dim * sizeof *cores);
    double *back = malloc(BATCH * n * sizeof *back);
    int failed = 1;
    if (ws == NULL || cores == NULL || back == NULL) {
        fprintf(stderr, "out of memory\n");
        goto done;
    }

    coreflow_matrices in = view_of(data, BATCH);
    coreflow_status st = coreflow_encode(model, &in, cores, ws, ws_bytes);
    if (st != COREFLOW_OK) {
        report("coreflow_encode", st);
        goto done;
    }
    /* Same C-order layout as the input. */
    coreflow_matrices_mut out = {back, BATCH, data->rows, data->cols, (ptrdiff_t)n,
                                 (ptrdiff_t)data->cols, 1};
    st = coreflow_decode(model, cores, &out, ws, ws_bytes);
    if (st != COREFLOW_OK) {
        report("coreflow_decode", st);
        goto done;
    }
    double err = 0, norm = 0;
    for (size_t k = 0; k < BATCH * n; k++) {
        err += (back[k] - data->x[k]) * (back[k] - data->x[k]);
        norm += data->x[k] * data->x[k];
    }
    coreflow_matrices again = {back, NULL, BATCH, data->rows, data->cols, (ptrdiff_t)n,
                               (ptrdiff_t)data->cols, 1};
    double *cores2 = cores + BATCH * info.core_dim;
    st = coreflow_encode(model, &again, cores2, ws, ws_bytes);
    if (st != COREFLOW_OK) {
        report("coreflow_encode", st);
        goto done;
    }
    double drift = 0, scale = 0;
    for (size_t k = 0; k < BATCH * info.core_dim; k++) {
        drift = fmax(drift, fabs(cores2[k] - cores[k]));
        scale = fmax(scale, fabs(cores[k]));
    }
    printf("round trip of %d matrices (workspace %zu bytes): relative error %.2e, "
           "core drift %.2e\n", BATCH, ws_bytes, sqrt(err / norm), drift / scale);
    failed = !(sqrt(err / norm) < 1e-2 && drift / scale < 1e-10);
    if (failed) fprintf(stderr, "round trip outside tolerance\n");
done:
    free(back);
    free(cores);
    free(ws);
    return failed;
}

typedef int (*step_fn)(const coreflow_model *model, const dataset *data);
struct step {
    const char *name;
    step_fn run;
};

int main(void) {
    if (coreflow_abi_version() != COREFLOW_ABI_VERSION) {
        fprintf(stderr, "header ABI %d, library ABI %u\n", COREFLOW_ABI_VERSION,
                coreflow_abi_version());
        return 1;
    }
    printf("CoreFlow %s (ABI %u)\n", coreflow_version(), coreflow_abi_version());

    dataset data = make_data(64, 32, 24);
    if (data.x == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    opts.rank_rows = 4;
    opts.rank_cols = 4;
    opts.center = 1;
    opts.seed = 7;
    opts.flow_steps = 0; /* geometry only */
    coreflow_matrices train = view_of(&data, data.count);
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_fit(&train, &opts, &model);
    if (st != COREFLOW_OK) {
        free(data.x);
        return report("coreflow_fit", st);
    }

    /* Steps on the fitted model, in order; the first failure stops the run. */
    static const struct step steps[] = {
        {"info", print_info},
        {"encode/decode round trip", round_trip},
    };
    int failed = 0;
    for (size_t k = 0; k < sizeof steps / sizeof steps[0] && !failed; k++) {
        printf("-- %s\n", steps[k].name);
        failed = steps[k].run(model, &data);
    }

    coreflow_model_free(model);
    free(data.x);
    puts(failed ? "FAILED" : "ok");
    return failed;
}
