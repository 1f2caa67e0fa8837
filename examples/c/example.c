/*
 * CoreFlow from C: fit a model (the geometry and a small flow on the cores)
 * to a synthetic set, then use it the way a host would: print its summary,
 * encode and decode, save it to a file and load it back, draw samples,
 * score them, and complete a partly observed matrix.
 *
 * The program fits one model, then runs a list of steps on it (`steps` in
 * main). Each step reads the model, prints what it did and returns 0 on
 * success, so a new capability of the library is one more function and one
 * more line in that list. Every call's status is checked; a failure prints
 * the status name and the library's message.
 *
 * usage: coreflow_example_c [model file]
 *   The model is saved to that file (default: coreflow_example_c.cfm in the
 *   working directory), loaded back, and the file is removed at the end.
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
/* Runs a CoreFlow call; on failure reports it and jumps to the step's
 * `done` label, where the step frees what it allocated. */
#define CALL(call)                                                          \
    do {                                                                    \
        coreflow_status call_status_ = (call);                              \
        if (call_status_ != COREFLOW_OK) {                                  \
            report(#call, call_status_);                                    \
            goto done;                                                      \
        }                                                                   \
    } while (0)
/* A failed check of a result: prints why and jumps to `done`. */
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            goto done;                                                      \
        }                                                                   \
    } while (0)

/* The training set: `count` matrices of rows x cols, NumPy C-order
 * (count, rows, cols), i.e. element (i, r, c) at ((i * rows) + r) * cols + c. */
typedef struct dataset {
    double *x;
    size_t count, rows, cols;
} dataset;

static coreflow_matrices view_of(const double *x, size_t count, size_t rows, size_t cols) {
    coreflow_matrices v;
    v.data = x;
    v.mask = NULL; /* every entry observed */
    v.count = count;
    v.rows = rows;
    v.cols = cols;
    v.sample_stride = (ptrdiff_t)(rows * cols);
    v.row_stride = (ptrdiff_t)cols;
    v.col_stride = 1;
    return v;
}

static coreflow_matrices_mut mut_view_of(double *x, size_t count, size_t rows, size_t cols) {
    coreflow_matrices_mut v = {x, count, rows, cols, (ptrdiff_t)(rows * cols), (ptrdiff_t)cols, 1};
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
 * around a fixed mean pattern, plus a little noise. Low rank by design; the
 * amplitudes are uniform, so the cores are not Gaussian. */
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

/* What every step receives. */
typedef struct context {
    const coreflow_model *model;
    const dataset *data;
    const char *model_path; /* where the save/load step writes the model */
} context;

static int get_info(const coreflow_model *model, coreflow_model_info *info) {
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info; /* the fields this program knows */
    coreflow_status st = coreflow_model_get_info(model, info);
    return st == COREFLOW_OK ? 0 : report("coreflow_model_get_info", st);
}

/* A workspace that serves each of `ops` on `model` with at most `count`
 * matrices: one buffer sized by the largest requirement. NULL on failure. */
static void *new_workspace(const coreflow_model *model, const coreflow_op *ops, size_t nops,
                           size_t count, size_t *bytes) {
    *bytes = 0;
    for (size_t k = 0; k < nops; k++) {
        size_t b = 0;
        coreflow_status st = coreflow_workspace_size(model, ops[k], count, NULL, &b);
        if (st != COREFLOW_OK) {
            report("coreflow_workspace_size", st);
            return NULL;
        }
        if (b > *bytes) *bytes = b;
    }
    void *ws = malloc(*bytes > 0 ? *bytes : 1);
    if (ws == NULL) fprintf(stderr, "out of memory (workspace of %zu bytes)\n", *bytes);
    return ws;
}

/* Root mean square of the entries of `count` matrices of `n` entries. */
static double rms(const double *x, size_t count, size_t n) {
    double s = 0;
    for (size_t k = 0; k < count * n; k++) s += x[k] * x[k];
    return sqrt(s / (double)(count * n));
}

static int print_info(const context *ctx) {
    coreflow_model_info info;
    if (get_info(ctx->model, &info)) return 1;
    printf("model: %zu x %zu matrices, ranks %zu x %zu (core dimension %zu)\n", info.rows,
           info.cols, info.rank_rows, info.rank_cols, info.core_dim);
    printf("       trained on %zu, centered %d, explained energy %.6f\n", info.train_count,
           info.centered, info.explained_energy);
    printf("       subspace: %u iterations, converged %d\n", info.subspace_iterations,
           info.subspace_converged);
    if (info.core_model == COREFLOW_CORE_MODEL_FLOW) {
        printf("       core model: flow on %zu principal components of %zu core coordinates "
               "(%u x %u hidden), "
               "final loss %.4f\n", info.flow_dim, info.core_dim, info.flow_layers,
               info.flow_hidden, info.final_loss);
    } else if (info.core_model == COREFLOW_CORE_MODEL_GAUSSIAN) {
        printf("       core model: full-covariance Gaussian (flow block of %zu)\n",
               info.flow_block);
    } else {
        printf("       core model: none (geometry only)\n");
    }
    printf("       held-out mean log-likelihood: flow %.2f, Gaussian %.2f\n",
           info.heldout_loglik_flow, info.heldout_loglik_gaussian);
    return 0;
}

/* Encodes a batch to its cores and decodes it back with one workspace sized
 * for both operations. The reconstruction error is the part of the data
 * outside the subspaces (the noise here); re-encoding the reconstruction
 * must give the same cores (a projection is idempotent). */
static int round_trip(const context *ctx) {
    enum { BATCH = 8 };
    const dataset *data = ctx->data;
    const size_t n = data->rows * data->cols;
    const coreflow_op ops[] = {COREFLOW_OP_ENCODE, COREFLOW_OP_DECODE};
    coreflow_model_info info;
    size_t ws_bytes = 0;
    void *ws = NULL;
    double *cores = NULL, *back = NULL;
    int failed = 1;
    if (get_info(ctx->model, &info)) return 1;
    ws = new_workspace(ctx->model, ops, 2, BATCH, &ws_bytes);
    cores = malloc(2 * BATCH * info.core_dim * sizeof *cores);
    back = malloc(BATCH * n * sizeof *back);
    EXPECT(ws != NULL && cores != NULL && back != NULL, "out of memory");

    coreflow_matrices in = view_of(data->x, BATCH, data->rows, data->cols);
    CALL(coreflow_encode(ctx->model, &in, cores, ws, ws_bytes));
    coreflow_matrices_mut out = mut_view_of(back, BATCH, data->rows, data->cols);
    CALL(coreflow_decode(ctx->model, cores, &out, ws, ws_bytes));
    double err = 0, norm = 0;
    for (size_t k = 0; k < BATCH * n; k++) {
        err += (back[k] - data->x[k]) * (back[k] - data->x[k]);
        norm += data->x[k] * data->x[k];
    }
    coreflow_matrices again = view_of(back, BATCH, data->rows, data->cols);
    double *cores2 = cores + BATCH * info.core_dim;
    CALL(coreflow_encode(ctx->model, &again, cores2, ws, ws_bytes));
    double drift = 0, scale = 0;
    for (size_t k = 0; k < BATCH * info.core_dim; k++) {
        drift = fmax(drift, fabs(cores2[k] - cores[k]));
        scale = fmax(scale, fabs(cores[k]));
    }
    printf("round trip of %d matrices (workspace %zu bytes): relative error %.2e, "
           "core drift %.2e\n", BATCH, ws_bytes, sqrt(err / norm), drift / scale);
    EXPECT(sqrt(err / norm) < 1e-2 && drift / scale < 1e-10, "round trip outside tolerance");
    failed = 0;
done:
    free(back);
    free(cores);
    free(ws);
    return failed;
}

/* Draws a batch of new matrices and scores them: each sample lies in the
 * learned geometry (residual ~ 1e-16) and has a finite log-density; the
 * training matrices are scored beside them for comparison. */
static int sample_and_score(const context *ctx) {
    enum { BATCH = 8 };
    const dataset *data = ctx->data;
    const size_t n = data->rows * data->cols;
    const coreflow_op ops[] = {COREFLOW_OP_SAMPLE, COREFLOW_OP_LOG_PROB};
    size_t ws_bytes = 0;
    void *ws = new_workspace(ctx->model, ops, 2, BATCH, &ws_bytes);
    double *gen = malloc(BATCH * n * sizeof *gen);
    double lp_gen[BATCH], res_gen[BATCH], lp_train[BATCH], res_train[BATCH];
    int failed = 1;
    EXPECT(ws != NULL && gen != NULL, "out of memory");

    /* Matrix j is sample number j of stream 2024; NULL options: RK4, 16 steps. */
    coreflow_matrices_mut out = mut_view_of(gen, BATCH, data->rows, data->cols);
    CALL(coreflow_sample(ctx->model, NULL, 2024, 0, &out, ws, ws_bytes));
    coreflow_matrices generated = view_of(gen, BATCH, data->rows, data->cols);
    CALL(coreflow_log_prob(ctx->model, NULL, &generated, lp_gen, res_gen, ws, ws_bytes));
    coreflow_matrices train = view_of(data->x, BATCH, data->rows, data->cols);
    CALL(coreflow_log_prob(ctx->model, NULL, &train, lp_train, res_train, ws, ws_bytes));

    double mean_gen = 0, mean_train = 0, worst_res = 0, train_res = 0;
    for (int j = 0; j < BATCH; j++) {
        EXPECT(isfinite(lp_gen[j]) && isfinite(lp_train[j]), "log_prob %d is not finite", j);
        mean_gen += lp_gen[j] / BATCH;
        mean_train += lp_train[j] / BATCH;
        worst_res = fmax(worst_res, res_gen[j]);
        train_res = fmax(train_res, res_train[j]);
    }
    double rms_gen = rms(gen, BATCH, n), rms_train = rms(data->x, data->count, n);
    printf("sampled %d matrices: rms %.3f (training data %.3f)\n", BATCH, rms_gen, rms_train);
    printf("mean log-density: samples %.2f, training matrices %.2f; distance from the "
           "geometry: samples %.1e, training matrices %.1e\n", mean_gen, mean_train, worst_res,
           train_res);
    EXPECT(worst_res < 1e-10, "samples lie outside the learned geometry");
    EXPECT(fabs(rms_gen - rms_train) < 0.5 * rms_train, "samples do not look like the data");
    failed = 0;
done:
    free(gen);
    free(ws);
    return failed;
}

/* Saves the model to a file, loads it back and checks that the loaded model
 * draws bitwise the same samples from the same seed. */
static int save_and_load(const context *ctx) {
    enum { BATCH = 4 };
    const dataset *data = ctx->data;
    const size_t n = data->rows * data->cols;
    const coreflow_op ops[] = {COREFLOW_OP_SAMPLE};
    coreflow_model *loaded = NULL;
    size_t ws_bytes = 0, image = 0;
    void *ws = new_workspace(ctx->model, ops, 1, BATCH, &ws_bytes);
    double *a = malloc(BATCH * n * sizeof *a), *b = malloc(BATCH * n * sizeof *b);
    int failed = 1;
    EXPECT(ws != NULL && a != NULL && b != NULL, "out of memory");

    CALL(coreflow_model_save(ctx->model, ctx->model_path));
    CALL(coreflow_model_load(ctx->model_path, &loaded));
    CALL(coreflow_model_to_bytes(ctx->model, NULL, 0, &image)); /* the length only */
    /* A workspace sized on one model serves its loaded copy: same sizes. */
    coreflow_matrices_mut out_a = mut_view_of(a, BATCH, data->rows, data->cols);
    coreflow_matrices_mut out_b = mut_view_of(b, BATCH, data->rows, data->cols);
    CALL(coreflow_sample(ctx->model, NULL, 7, 100, &out_a, ws, ws_bytes));
    CALL(coreflow_sample(loaded, NULL, 7, 100, &out_b, ws, ws_bytes));
    printf("saved to %s (%zu bytes) and loaded: samples %s\n", ctx->model_path, image,
           memcmp(a, b, BATCH * n * sizeof *a) == 0 ? "bitwise equal" : "DIFFER");
    EXPECT(memcmp(a, b, BATCH * n * sizeof *a) == 0, "the loaded model samples differently");
    failed = 0;
done:
    coreflow_model_free(loaded);
    remove(ctx->model_path);
    free(b);
    free(a);
    free(ws);
    return failed;
}

/* Completes a new matrix of which 30 % of the entries are missing: the
 * observed entries come back bitwise, the missing ones from the model. */
static int complete_masked(const context *ctx) {
    const dataset *data = ctx->data;
    const size_t n = data->rows * data->cols;
    const coreflow_op ops[] = {COREFLOW_OP_COMPLETE};
    size_t ws_bytes = 0;
    void *ws = new_workspace(ctx->model, ops, 1, 1, &ws_bytes);
    dataset fresh = make_data(1, data->rows, data->cols); /* not seen in training */
    unsigned char *mask = malloc(n);
    double *filled = malloc(n * sizeof *filled);
    int failed = 1;
    EXPECT(ws != NULL && fresh.x != NULL && mask != NULL && filled != NULL, "out of memory");

    size_t missing = 0;
    for (size_t k = 0; k < n; k++) {
        mask[k] = uniform() >= 0.3; /* nonzero = observed */
        missing += !mask[k];
    }
    /* The mask is addressed with the data's strides (here C-order). */
    coreflow_matrices partial = view_of(fresh.x, 1, data->rows, data->cols);
    partial.mask = mask;
    coreflow_matrices_mut out = mut_view_of(filled, 1, data->rows, data->cols);
    CALL(coreflow_complete(ctx->model, &partial, &out, ws, ws_bytes));

    double err = 0, norm = 0;
    for (size_t k = 0; k < n; k++) {
        if (mask[k]) {
            EXPECT(memcmp(&filled[k], &fresh.x[k], sizeof(double)) == 0,
                   "observed entry %zu changed", k);
        } else {
            err += (filled[k] - fresh.x[k]) * (filled[k] - fresh.x[k]);
            norm += fresh.x[k] * fresh.x[k];
        }
    }
    printf("completed %zu missing of %zu entries: relative error %.2e; observed entries "
           "unchanged\n", missing, n, sqrt(err / norm));
    EXPECT(sqrt(err / norm) < 1e-2, "completion error too large");
    failed = 0;
done:
    free(filled);
    free(mask);
    free(fresh.x);
    free(ws);
    return failed;
}

typedef int (*step_fn)(const context *ctx);
struct step {
    const char *name;
    step_fn run;
};

int main(int argc, char **argv) {
    if (coreflow_abi_version() != COREFLOW_ABI_VERSION) {
        fprintf(stderr, "header ABI %d, library ABI %u\n", COREFLOW_ABI_VERSION,
                coreflow_abi_version());
        return 1;
    }
    printf("CoreFlow %s (ABI %u)\n", coreflow_version(), coreflow_abi_version());

    dataset data = make_data(96, 32, 24);
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
    /* A small flow: enough for three latent amplitudes, and quick even
     * under valgrind (the defaults, 4000 steps of a 3 x 256 network, are
     * sized for real data sets). */
    opts.flow_steps = 300;
    opts.flow_hidden = 32;
    opts.flow_layers = 2;
    opts.batch_size = 64;
    coreflow_matrices train = view_of(data.x, data.count, data.rows, data.cols);
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
        {"sample and log-density", sample_and_score},
        {"save, load, sample again", save_and_load},
        {"complete a partly observed matrix", complete_masked},
    };
    context ctx = {model, &data, argc > 1 ? argv[1] : "coreflow_example_c.cfm"};
    int failed = 0;
    for (size_t k = 0; k < sizeof steps / sizeof steps[0] && !failed; k++) {
        printf("-- %s\n", steps[k].name);
        failed = steps[k].run(&ctx);
    }

    coreflow_model_free(model);
    free(data.x);
    puts(failed ? "FAILED" : "ok");
    return failed;
}
