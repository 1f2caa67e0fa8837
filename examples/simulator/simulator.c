/*
 * A host simulation that compresses its state and draws generated fields
 * every time step.
 *
 * The toy physics is heat diffusion on a rows x cols grid with a heat source
 * circling the domain. A first run records snapshots and fits a CoreFlow
 * model to them (the geometry and a small flow on the cores); a second run,
 * started elsewhere on the orbit, then at every step
 *   - encodes the state to its rank_rows x rank_cols core (what the host
 *     would store or send) and decodes it back to check the reconstruction;
 *   - draws one new field from the model with coreflow_sample (sample number
 *     t of one stream, as a stochastic forcing or an ensemble member would
 *     be drawn) and encodes and decodes it: a generated field lies in the
 *     learned geometry, so it comes back unchanged.
 *
 * The point is the calling pattern of a real-time host linked against the
 * STATIC library: every buffer, including the ONE CoreFlow workspace (sized
 * with coreflow_workspace_size as the largest need of sample, encode and
 * decode on one matrix), is allocated before the time loop, and the loop
 * itself performs no heap allocation. This is checked, not assumed:
 * alloc_counter.c interposes malloc and its siblings for the whole process
 * and counts every call, and the program fails if the count moves during
 * the loop.
 *
 * The per-step cost is reported: the time of the coreflow_sample call of
 * every step (median, mean, 99th percentile) and of the whole step.
 *
 *   coreflow_simulator                      the simulation above
 *   coreflow_simulator --time-model FILE [DRAWS]
 *       loads a saved model (e.g. one written by coreflow fit or the
 *       sample_latency example) and times DRAWS (default 2000) calls of
 *       coreflow_sample with one matrix each, the same way (and with the
 *       same no-allocation check): the per-step cost at that model's shape.
 */
#define _POSIX_C_SOURCE 199309L
#include "alloc_counter.h"
#include "coreflow.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints the median, mean and 99th percentile of n timings (sorts them). */
static void report(const char *what, double *us, int n) {
    double mean = 0.0;
    for (int k = 0; k < n; k++) mean += us[k] / n;
    qsort(us, (size_t)n, sizeof *us, cmp_double);
    printf("%s: median %.1f us, mean %.1f us, p99 %.1f us (%d calls)\n", what, us[n / 2], mean,
           us[(n * 99) / 100], n);
}

enum { ROWS = 40, COLS = 32, TRAIN_STEPS = 600, RECORD_EVERY = 4, RUN_STEPS = 400 };

typedef struct sim {
    double u[ROWS * COLS];   /* temperature, row-major */
    double tmp[ROWS * COLS]; /* next state */
    double phase;            /* angle of the source on its orbit */
} sim;

/* One explicit Euler step of u' = kappa * laplacian(u) + source - decay * u
 * with zero boundary values (grid spacing 1, kappa * dt = 0.2 is stable). */
static void step(sim *s) {
    const double kdt = 0.2, decay = 0.01, dphase = 0.02;
    double cy = ROWS * (0.5 + 0.3 * sin(s->phase)), cx = COLS * (0.5 + 0.3 * cos(s->phase));
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < COLS; c++) {
            double here = s->u[r * COLS + c];
            double up = r > 0 ? s->u[(r - 1) * COLS + c] : 0.0;
            double down = r < ROWS - 1 ? s->u[(r + 1) * COLS + c] : 0.0;
            double left = c > 0 ? s->u[r * COLS + c - 1] : 0.0;
            double right = c < COLS - 1 ? s->u[r * COLS + c + 1] : 0.0;
            double d2 = (r - cy) * (r - cy) + (c - cx) * (c - cx);
            double source = exp(-d2 / 18.0);
            s->tmp[r * COLS + c] =
                here + kdt * (up + down + left + right - 4.0 * here) + source - decay * here;
        }
    }
    memcpy(s->u, s->tmp, sizeof s->u);
    s->phase += dphase;
}

static int fail(const char *what, coreflow_status st) {
    fprintf(stderr, "%s failed: %s: %s\n", what, coreflow_status_name(st),
            coreflow_last_error_message());
    return 1;
}

/* --time-model FILE [DRAWS]: one matrix per call from a saved model. */
static int time_model(const char *path, int draws) {
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_model_load(path, &model);
    if (st != COREFLOW_OK) return fail("coreflow_model_load", st);
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if ((st = coreflow_model_get_info(model, &info)) != COREFLOW_OK)
        return fail("coreflow_model_get_info", st);
    size_t ws_bytes = 0;
    if ((st = coreflow_workspace_size(model, COREFLOW_OP_SAMPLE, 1, NULL, &ws_bytes)) != COREFLOW_OK)
        return fail("coreflow_workspace_size", st);
    void *ws = malloc(ws_bytes > 0 ? ws_bytes : 1);
    double *field = malloc(info.rows * info.cols * sizeof *field);
    double *us = malloc((size_t)draws * sizeof *us);
    if (ws == NULL || field == NULL || us == NULL) return 1;
    coreflow_matrices_mut out = {field, 1, info.rows, info.cols, (ptrdiff_t)(info.rows * info.cols),
                                 (ptrdiff_t)info.cols, 1};
    if ((st = coreflow_sample(model, NULL, 7, 0, &out, ws, ws_bytes)) != COREFLOW_OK)
        return fail("coreflow_sample", st);
    unsigned long before = alloc_count();
    for (int t = 0; t < draws; t++) {
        double t0 = now_us();
        st = coreflow_sample(model, NULL, 7, (uint64_t)t + 1, &out, ws, ws_bytes);
        us[t] = now_us() - t0;
        if (st != COREFLOW_OK) return fail("coreflow_sample", st);
    }
    unsigned long during = alloc_count() - before;
    printf("model %s: %zu x %zu matrices, core of %zu values, %s core model (flow on %zu "
           "components, hidden %u)\n", path, info.rows, info.cols, info.core_dim,
           info.core_model == COREFLOW_CORE_MODEL_FLOW ? "flow" : "Gaussian", info.flow_dim,
           info.flow_hidden);
    report("coreflow_sample, one matrix per call", us, draws);
    printf("heap allocations while drawing: %lu\n", during);
    free(us);
    free(field);
    free(ws);
    coreflow_model_free(model);
    if (during != 0) {
        puts("FAILED");
        return 1;
    }
    puts("ok");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--time-model") == 0)
        return time_model(argv[2], argc >= 4 ? atoi(argv[3]) : 2000);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--time-model FILE [DRAWS]]\n", argv[0]);
        return 2;
    }
    /* Training run: record every RECORD_EVERY-th state, C-order (N, ROWS, COLS). */
    enum { N = TRAIN_STEPS / RECORD_EVERY };
    static sim s;
    static double snapshots[N * ROWS * COLS];
    memset(&s, 0, sizeof s);
    for (int t = 0; t < TRAIN_STEPS; t++) {
        step(&s);
        if (t % RECORD_EVERY == RECORD_EVERY - 1)
            memcpy(&snapshots[(t / RECORD_EVERY) * ROWS * COLS], s.u, sizeof s.u);
    }

    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    opts.energy = 0.99999; /* ranks chosen to hold this fraction of the energy */
    opts.center = 1;
    /* A small flow (the defaults are sized for larger data sets). */
    opts.flow_steps = 400;
    opts.flow_hidden = 32;
    opts.flow_layers = 2;
    opts.batch_size = 64;
    coreflow_matrices train = {snapshots, NULL, N, ROWS, COLS, ROWS * COLS, COLS, 1};
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_fit(&train, &opts, &model);
    if (st != COREFLOW_OK) return fail("coreflow_fit", st);
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    st = coreflow_model_get_info(model, &info);
    if (st != COREFLOW_OK) return fail("coreflow_model_get_info", st);

    /* Everything the loop needs, allocated once: one workspace that serves
     * every operation of the loop on one matrix (the largest of their
     * sizes), the cores and the generated field. */
    static const coreflow_op ops[] = {COREFLOW_OP_SAMPLE, COREFLOW_OP_ENCODE, COREFLOW_OP_DECODE};
    size_t ws_bytes = 0;
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        size_t bytes = 0;
        if ((st = coreflow_workspace_size(model, ops[k], 1, NULL, &bytes)) != COREFLOW_OK)
            return fail("coreflow_workspace_size", st);
        if (bytes > ws_bytes) ws_bytes = bytes;
    }
    void *ws = malloc(ws_bytes > 0 ? ws_bytes : 1);
    double *core = malloc(2 * info.core_dim * sizeof *core);
    static double restored[ROWS * COLS], generated[ROWS * COLS], generated_back[ROWS * COLS];
    if (ws == NULL || core == NULL) return 1;
    coreflow_matrices state = {s.u, NULL, 1, ROWS, COLS, ROWS * COLS, COLS, 1};
    coreflow_matrices_mut out = {restored, 1, ROWS, COLS, ROWS * COLS, COLS, 1};
    coreflow_matrices gen_in = {generated, NULL, 1, ROWS, COLS, ROWS * COLS, COLS, 1};
    coreflow_matrices_mut gen_out = {generated, 1, ROWS, COLS, ROWS * COLS, COLS, 1};
    coreflow_matrices_mut gen_back = {generated_back, 1, ROWS, COLS, ROWS * COLS, COLS, 1};
    double *gen_core = core + info.core_dim;
    const uint64_t stream = 99; /* the seed of the generated fields */

    /* Second run, a quarter orbit ahead. One untimed call of each operation
     * first: the first matrix product on a thread sizes that thread's
     * packing cache (README, "Workspaces"); the loop must not allocate
     * after that. */
    memset(&s, 0, sizeof s);
    s.phase = 1.5707963;
    if ((st = coreflow_encode(model, &state, core, ws, ws_bytes)) != COREFLOW_OK)
        return fail("coreflow_encode", st);
    if ((st = coreflow_decode(model, core, &out, ws, ws_bytes)) != COREFLOW_OK)
        return fail("coreflow_decode", st);
    if ((st = coreflow_sample(model, NULL, stream, 0, &gen_out, ws, ws_bytes)) != COREFLOW_OK)
        return fail("coreflow_sample", st);

    double worst = 0.0, worst_gen = 0.0, gen_energy = 0.0;
    static double sample_us[RUN_STEPS], step_us[RUN_STEPS];
    const char *failed_call = NULL;
    unsigned long before = alloc_count();
    for (int t = 0; t < RUN_STEPS; t++) {
        double t0 = now_us();
        step(&s);
        /* Compress the state and restore it. */
        if ((st = coreflow_encode(model, &state, core, ws, ws_bytes)) != COREFLOW_OK) {
            failed_call = "coreflow_encode (state)";
            break;
        }
        if ((st = coreflow_decode(model, core, &out, ws, ws_bytes)) != COREFLOW_OK) {
            failed_call = "coreflow_decode (state)";
            break;
        }
        /* Draw field number t of the stream, then encode and decode it. */
        double ts = now_us();
        st = coreflow_sample(model, NULL, stream, (uint64_t)t, &gen_out, ws, ws_bytes);
        sample_us[t] = now_us() - ts;
        if (st != COREFLOW_OK) {
            failed_call = "coreflow_sample";
            break;
        }
        if ((st = coreflow_encode(model, &gen_in, gen_core, ws, ws_bytes)) != COREFLOW_OK) {
            failed_call = "coreflow_encode (generated)";
            break;
        }
        if ((st = coreflow_decode(model, gen_core, &gen_back, ws, ws_bytes)) != COREFLOW_OK) {
            failed_call = "coreflow_decode (generated)";
            break;
        }
        double gerr = 0.0, gnorm = 0.0;
        for (int k = 0; k < ROWS * COLS; k++) {
            gerr += (generated_back[k] - generated[k]) * (generated_back[k] - generated[k]);
            gnorm += generated[k] * generated[k];
        }
        worst_gen = fmax(worst_gen, sqrt(gerr / gnorm));
        gen_energy += gnorm / RUN_STEPS;
        if (t >= RUN_STEPS / 4) { /* past the start-up transient */
            double err = 0.0, norm = 0.0;
            for (int k = 0; k < ROWS * COLS; k++) {
                err += (restored[k] - s.u[k]) * (restored[k] - s.u[k]);
                norm += s.u[k] * s.u[k];
            }
            worst = fmax(worst, sqrt(err / norm));
        }
        step_us[t] = now_us() - t0;
    }
    unsigned long during = alloc_count() - before;
    if (failed_call != NULL) return fail(failed_call, st);

    /* The generated fields should carry the energy of the recorded ones. */
    double train_energy = 0.0;
    for (int i = 0; i < N; i++) {
        double e = 0.0;
        for (int k = 0; k < ROWS * COLS; k++)
            e += snapshots[i * ROWS * COLS + k] * snapshots[i * ROWS * COLS + k];
        train_energy += e / N;
    }
    double energy_ratio = gen_energy / train_energy;

    printf("fit on %d snapshots of %d x %d: ranks %zu x %zu (core of %zu values, %.0fx smaller), "
           "%s core model\n", N, ROWS, COLS, info.rank_rows, info.rank_cols, info.core_dim,
           (double)(ROWS * COLS) / (double)info.core_dim,
           info.core_model == COREFLOW_CORE_MODEL_FLOW ? "flow" : "Gaussian");
    printf("%d steps, each: encode+decode of the state, sample+encode+decode of a generated "
           "field, with one %zu-byte workspace\n", RUN_STEPS, ws_bytes);
    printf("worst relative reconstruction error of the state: %.2e\n", worst);
    printf("generated fields: worst encode/decode change %.2e, mean energy %.3f x that of "
           "the recorded snapshots\n", worst_gen, energy_ratio);
    report("per step, coreflow_sample of one field", sample_us, RUN_STEPS);
    report("per step, whole step (physics, 2 encodes, 2 decodes, 1 sample)", step_us, RUN_STEPS);
    printf("heap allocations inside the time loop: %lu\n", during);

    free(core);
    free(ws);
    coreflow_model_free(model);
    if (during != 0 || !(worst < 1e-2) || !(worst_gen < 1e-10) ||
        !(energy_ratio > 0.5 && energy_ratio < 2.0)) {
        puts("FAILED");
        return 1;
    }
    puts("ok");
    return 0;
}
