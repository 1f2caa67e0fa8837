/*
 * Distributed fitting with MPI: every process holds a shard of the training
 * samples; CoreFlow asks the host for element-wise sums through the
 * allreduce callback, and every process ends with the same model.
 *
 *   mpirun -np 4 ./mpi_fit            fit, compare with single-process fits
 *   mpirun -np 4 ./mpi_fit --fail 3   the 3rd allreduce fails on rank 0: every
 *                                     process must stop with
 *                                     COREFLOW_ERR_COMMUNICATION, none may hang
 *
 * Two checks, in order:
 * 1. Geometry (flow_steps = 0): U and V of the sharded fit equal those of a
 *    single-process fit on the whole set (1e-10).
 * 2. Flow: a small flow is trained data-parallel through the callback
 *    (statistics and gradients summed across the ranks). Every rank must end
 *    with the same flow (its samples agree to 1e-8), and samples of it are
 *    compared with fresh data by MMD^2 (unbiased, Gaussian kernel on vec(X),
 *    median-heuristic bandwidth): it must lie within the run-to-run spread
 *    of single-process fits with different seeds (those fits are spread over
 *    the ranks). A single-process flow differs from the distributed one (the
 *    minibatches are drawn per rank), so the comparison is statistical.
 * Exit status 0 when the checks pass.
 */
#include "coreflow.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    N = 240,     /* training matrices, split over the ranks */
    M = 48,      /* rows */
    NC = 40,     /* columns */
    R = 4,       /* planted row rank */
    S = 3,       /* planted column rank */
    FRESH = 200, /* held-back matrices from the same distribution, for MMD^2 */
    GEN = 200,   /* generated matrices per model, for MMD^2 */
    SEEDS = 4    /* single-process reference fits (different seeds) */
};

typedef struct {
    MPI_Comm comm;
    int fail_at;     /* call number that fails on rank 0 (0 = never) */
    int calls;
    long long sent;  /* doubles summed, for the communication report */
} reduce_ctx;

/* Sums buf across all processes. The error flag is agreed on first, so a
 * failure anywhere makes every process return nonzero from the same call. */
static int32_t mpi_allreduce(void *user, double *buf, size_t len) {
    reduce_ctx *ctx = (reduce_ctx *)user;
    int rank, failed = 0, any_failed = 0;
    MPI_Comm_rank(ctx->comm, &rank);
    ctx->calls++;
    if (rank == 0 && ctx->fail_at == ctx->calls) failed = 1;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, ctx->comm);
    if (any_failed) return 1;
    for (size_t off = 0; off < len;) {
        int chunk = len - off > (size_t)INT_MAX ? INT_MAX : (int)(len - off);
        if (MPI_Allreduce(MPI_IN_PLACE, buf + off, chunk, MPI_DOUBLE, MPI_SUM, ctx->comm) != MPI_SUCCESS)
            return 2;
        off += (size_t)chunk;
    }
    ctx->sent += (long long)len;
    return 0;
}

/* The same seeded planted data set on every process: X_i = U* C_i V*^T + noise. */
static uint64_t state = 0x2545F4914F6CDD1Dull;
static double uniform01(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return ((state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double gaussian(void) {
    double u = uniform01(), v = uniform01();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static double ustar[M * R], vstar[NC * S];

static void make_bases(void) {
    for (size_t k = 0; k < M * R; k++) ustar[k] = gaussian() / sqrt((double)M);
    for (size_t k = 0; k < NC * S; k++) vstar[k] = gaussian() / sqrt((double)NC);
}

/* `count` matrices, C-order. The cores are a two-component mixture (a
 * shift of +-2 along the two leading coordinates plus Gaussian spread), so
 * a flow has something to learn that a Gaussian would miss. */
static void make_samples(double *x, size_t count) {
    for (size_t i = 0; i < count; i++) {
        double c[R * S];
        double side = uniform01() < 0.5 ? -1.0 : 1.0;
        for (size_t k = 0; k < R * S; k++) {
            double scale = (double)(R * S - k);
            c[k] = scale * (gaussian() + (k < 2 ? 2.0 * side : 0.0));
        }
        for (size_t a = 0; a < M; a++)
            for (size_t b = 0; b < NC; b++) {
                double s = 0;
                for (size_t p = 0; p < R; p++)
                    for (size_t q = 0; q < S; q++)
                        s += ustar[a + p * M] * c[p + q * R] * vstar[b + q * NC];
                x[(i * M + a) * NC + b] = s + 0.01 * gaussian();
            }
    }
}

static coreflow_matrices view(const double *x, size_t first, size_t count) {
    coreflow_matrices m = {x + first * M * NC, NULL, count, M, NC, M * NC, NC, 1};
    return m;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Unbiased MMD^2 between the sets a (na points) and b (nb points) of `dim`
 * coordinates each, with the Gaussian kernel exp(-d^2 / (2 h^2)) and h the
 * median pairwise distance of the pooled set. NAN when out of memory. */
static double mmd2(const double *a, size_t na, const double *b, size_t nb, size_t dim) {
    size_t n = na + nb, pairs = n * (n - 1) / 2;
    double *d2 = malloc(pairs * sizeof *d2), *sorted = malloc(pairs * sizeof *sorted);
    if (d2 == NULL || sorted == NULL) {
        free(d2);
        free(sorted);
        return NAN;
    }
    /* Pairwise squared distances, upper triangle row by row. */
    size_t p = 0;
    for (size_t i = 0; i < n; i++) {
        const double *xi = i < na ? a + i * dim : b + (i - na) * dim;
        for (size_t j = i + 1; j < n; j++, p++) {
            const double *xj = j < na ? a + j * dim : b + (j - na) * dim;
            double s = 0;
            for (size_t k = 0; k < dim; k++) s += (xi[k] - xj[k]) * (xi[k] - xj[k]);
            d2[p] = s;
        }
    }
    memcpy(sorted, d2, pairs * sizeof *d2);
    qsort(sorted, pairs, sizeof *sorted, cmp_double);
    double h2 = sorted[pairs / 2]; /* median of d^2 = (median of d)^2 */
    double kaa = 0, kbb = 0, kab = 0;
    p = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++, p++) {
            double k = exp(-d2[p] / (2.0 * h2));
            if (j < na) kaa += k;
            else if (i >= na) kbb += k;
            else kab += k;
        }
    free(d2);
    free(sorted);
    /* Each unordered pair counted once: the within-set sums are halves. */
    return 2.0 * kaa / ((double)na * (double)(na - 1)) + 2.0 * kbb / ((double)nb * (double)(nb - 1)) -
           2.0 * kab / ((double)na * (double)nb);
}

/* GEN samples of stream 1234 into gen; returns the status. */
static coreflow_status draw(const coreflow_model *model, double *gen) {
    size_t bytes = 0;
    coreflow_status st = coreflow_workspace_size(model, COREFLOW_OP_SAMPLE, GEN, NULL, &bytes);
    if (st != COREFLOW_OK) return st;
    void *ws = malloc(bytes > 0 ? bytes : 1);
    if (ws == NULL) return COREFLOW_ERR_INTERNAL;
    coreflow_matrices_mut out = {gen, GEN, M, NC, M * NC, NC, 1};
    st = coreflow_sample(model, NULL, 1234, 0, &out, ws, bytes);
    free(ws);
    return st;
}

static int report(int rank, const char *what, coreflow_status st) {
    fprintf(stderr, "rank %d: %s failed: %s: %s\n", rank, what, coreflow_status_name(st),
            coreflow_last_error_message());
    return 0;
}

/* Check 1: the sharded geometry equals the single-process geometry. */
static int check_geometry(const double *x, size_t first, size_t last, coreflow_fit_options opts,
                          reduce_ctx *ctx, int rank, int size) {
    opts.flow_steps = 0; /* geometry only */
    coreflow_matrices shard = view(x, first, last - first), all = view(x, 0, N);
    coreflow_model *model = NULL, *whole = NULL;
    coreflow_status st = coreflow_fit(&shard, &opts, &model);
    int ok = st == COREFLOW_OK || report(rank, "sharded fit", st);
    coreflow_fit_options single = opts;
    single.allreduce = NULL;
    if (ok && (st = coreflow_fit(&all, &single, &whole)) != COREFLOW_OK)
        ok = report(rank, "single-process fit", st);
    double diff = INFINITY;
    if (ok) {
        static double u1[M * R], v1[NC * S], u2[M * R], v2[NC * S];
        coreflow_model_subspaces(model, u1, v1);
        coreflow_model_subspaces(whole, u2, v2);
        diff = 0;
        for (size_t k = 0; k < M * R; k++) diff = fmax(diff, fabs(u1[k] - u2[k]));
        for (size_t k = 0; k < NC * S; k++) diff = fmax(diff, fabs(v1[k] - v2[k]));
        ok = diff < 1e-10;
    }
    printf("rank %d/%d: geometry: %zu samples, %d allreduce calls, %lld doubles summed, "
           "max |U - U_single|, |V - V_single| = %.2e -> %s\n",
           rank, size, last - first, ctx->calls, ctx->sent, diff, ok ? "ok" : "FAILED");
    coreflow_model_free(whole);
    coreflow_model_free(model);
    return ok;
}

/* Check 2: a small flow trained through the callback, against the spread of
 * single-process flows with different seeds. Returns 1 when it passes. */
static int check_flow(const double *x, size_t first, size_t last, coreflow_fit_options opts,
                      int rank, int size) {
    opts.flow_steps = 300;
    opts.flow_hidden = 64;
    opts.flow_layers = 2;
    opts.batch_size = 64;
    opts.core_model = COREFLOW_CORE_MODEL_FLOW; /* compare flows, not the fallback */
    static double fresh[FRESH * M * NC], gen[GEN * M * NC], gen0[GEN * M * NC];
    make_samples(fresh, FRESH); /* the same on every rank: same seed, same calls */

    /* The distributed flow, and how far the ranks' samples are from rank 0's. */
    coreflow_matrices shard = view(x, first, last - first);
    coreflow_model *dist = NULL;
    coreflow_status st = coreflow_fit(&shard, &opts, &dist);
    int ok = st == COREFLOW_OK || report(rank, "distributed flow fit", st);
    if (ok && (st = draw(dist, gen)) != COREFLOW_OK) ok = report(rank, "sample", st);
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (ok) coreflow_model_get_info(dist, &info);
    coreflow_model_free(dist);
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_ok) return 0;
    memcpy(gen0, gen, sizeof gen);
    MPI_Bcast(gen0, GEN * M * NC, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    double diff = 0, scale = 0;
    for (size_t k = 0; k < (size_t)GEN * M * NC; k++) {
        diff = fmax(diff, fabs(gen[k] - gen0[k]));
        scale = fmax(scale, fabs(gen0[k]));
    }
    double rel = diff / scale, worst_rel = 0;
    MPI_Allreduce(&rel, &worst_rel, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int shared = worst_rel < 1e-8;

    /* MMD^2 of each rank's distributed flow, gathered on every rank. */
    double mine = mmd2(gen, GEN, fresh, FRESH, M * NC);
    double *per_rank = calloc((size_t)size, sizeof *per_rank);
    if (per_rank == NULL) return 0;
    MPI_Allgather(&mine, 1, MPI_DOUBLE, per_rank, 1, MPI_DOUBLE, MPI_COMM_WORLD);

    /* Single-process reference fits on the whole set, seeds 1..SEEDS,
     * spread over the ranks; each slot is filled by one rank, then summed. */
    double single[SEEDS] = {0}, all_single[SEEDS];
    coreflow_fit_options one = opts;
    one.allreduce = NULL;
    coreflow_matrices all = view(x, 0, N);
    ok = 1;
    for (int s = rank; s < SEEDS && ok; s += size) {
        coreflow_model *ref = NULL;
        one.seed = (uint64_t)(s + 1);
        if ((st = coreflow_fit(&all, &one, &ref)) != COREFLOW_OK)
            ok = report(rank, "single-process flow fit", st);
        else if ((st = draw(ref, gen)) != COREFLOW_OK)
            ok = report(rank, "sample", st);
        else
            single[s] = mmd2(gen, GEN, fresh, FRESH, M * NC);
        coreflow_model_free(ref);
    }
    MPI_Allreduce(single, all_single, SEEDS, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!ok) {
        free(per_rank);
        return 0;
    }
    double lo = all_single[0], hi = all_single[0];
    for (int s = 1; s < SEEDS; s++) {
        lo = fmin(lo, all_single[s]);
        hi = fmax(hi, all_single[s]);
    }
    /* "Within the spread": no worse than the worst seed by more than the
     * spread itself (MMD^2 of a finite sample is noisy in both directions). */
    double limit = hi + (hi - lo);

    int pass = shared && per_rank[0] <= limit;
    if (rank == 0) {
        printf("flow: %zu training matrices, %u steps, %u x %u hidden, flow block %zu of %zu; "
               "MMD^2 to %d fresh matrices: single-process seeds 1-%d %.3e .. %.3e (limit %.3e)\n",
               info.train_count, opts.flow_steps, opts.flow_layers, opts.flow_hidden,
               info.flow_dim, info.core_dim, FRESH, SEEDS, lo, hi, limit);
        if (shared) {
            printf("flow: every rank holds the same flow (samples agree to %.1e); distributed "
                   "MMD^2 %.3e -> %s\n", worst_rel, per_rank[0], pass ? "ok" : "FAILED");
        } else {
            /* Each rank then trained on its own shard alone. */
            printf("flow: FAILED: the ranks' flows differ (samples differ by %.1e relative): "
                   "the flow's training did not go through the callback. Per-rank MMD^2:",
                   worst_rel);
            for (int r = 0; r < size; r++) printf(" %.3e", per_rank[r]);
            printf("\n");
        }
    }
    free(per_rank);
    return pass;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int fail_at = (argc > 2 && strcmp(argv[1], "--fail") == 0) ? atoi(argv[2]) : 0;

    static double x[N * M * NC];
    make_bases();
    make_samples(x, N);
    size_t first = (size_t)N * (size_t)rank / (size_t)size;
    size_t last = (size_t)N * (size_t)(rank + 1) / (size_t)size;

    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    opts.rank_rows = R;
    opts.rank_cols = S;
    opts.center = 1;
    opts.threads = 1; /* one process per core */
    reduce_ctx ctx = {MPI_COMM_WORLD, fail_at, 0, 0};
    opts.allreduce = mpi_allreduce;
    opts.allreduce_user = &ctx;

    int ok;
    if (fail_at > 0) {
        opts.flow_steps = 0;
        coreflow_matrices shard = view(x, first, last - first);
        coreflow_model *model = NULL;
        coreflow_status st = coreflow_fit(&shard, &opts, &model);
        ok = st == COREFLOW_ERR_COMMUNICATION && model == NULL;
        printf("rank %d/%d: injected failure at call %d -> %s (%s)\n", rank, size, fail_at,
               coreflow_status_name(st), coreflow_last_error_message());
        coreflow_model_free(model);
    } else {
        ok = check_geometry(x, first, last, opts, &ctx, rank, size);
        int all_ok = 0;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        ok = all_ok && check_flow(x, first, last, opts, rank, size);
    }
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
