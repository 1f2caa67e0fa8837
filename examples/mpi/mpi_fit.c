/*
 * Distributed fitting with MPI: every process holds a shard of the training
 * samples; CoreFlow asks the host for element-wise sums through the
 * allreduce callback, and every process ends with the same model.
 *
 *   mpirun -np 4 ./mpi_fit            fit, compare with a single-process fit
 *   mpirun -np 4 ./mpi_fit --fail 3   the 3rd allreduce fails on rank 0: every
 *                                     process must stop with
 *                                     COREFLOW_ERR_COMMUNICATION, none may hang
 * Exit status 0 when the checks pass.
 */
#include "coreflow.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 240, M = 48, NC = 40, R = 4, S = 3 };

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

static void make_data(double *x) {
    static double u[M * R], v[NC * S];
    for (size_t k = 0; k < M * R; k++) u[k] = gaussian() / sqrt((double)M);
    for (size_t k = 0; k < NC * S; k++) v[k] = gaussian() / sqrt((double)NC);
    for (size_t i = 0; i < N; i++) {
        double c[R * S];
        for (size_t k = 0; k < R * S; k++) c[k] = gaussian() * (double)(R * S - k);
        for (size_t a = 0; a < M; a++)
            for (size_t b = 0; b < NC; b++) {
                double s = 0;
                for (size_t p = 0; p < R; p++)
                    for (size_t q = 0; q < S; q++) s += u[a + p * M] * c[p + q * R] * v[b + q * NC];
                x[(i * M + a) * NC + b] = s + 0.01 * gaussian();
            }
    }
}

static coreflow_matrices view(const double *x, size_t first, size_t count) {
    coreflow_matrices m = {x + first * M * NC, NULL, count, M, NC, M * NC, NC, 1};
    return m;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int fail_at = (argc > 2 && strcmp(argv[1], "--fail") == 0) ? atoi(argv[2]) : 0;

    static double x[N * M * NC];
    make_data(x);
    size_t first = (size_t)N * (size_t)rank / (size_t)size;
    size_t last = (size_t)N * (size_t)(rank + 1) / (size_t)size;

    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    opts.rank_rows = R;
    opts.rank_cols = S;
    opts.center = 1;
    opts.threads = 1;
    reduce_ctx ctx = {MPI_COMM_WORLD, fail_at, 0, 0};
    opts.allreduce = mpi_allreduce;
    opts.allreduce_user = &ctx;

    coreflow_matrices shard = view(x, first, last - first);
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_fit(&shard, &opts, &model);
    int ok;
    if (fail_at > 0) {
        ok = st == COREFLOW_ERR_COMMUNICATION && model == NULL;
        printf("rank %d/%d: injected failure at call %d -> %s (%s)\n", rank, size, fail_at,
               coreflow_status_name(st), coreflow_last_error_message());
    } else {
        /* Reference: a single-process fit on the whole set. */
        coreflow_fit_options single = opts;
        single.allreduce = NULL;
        coreflow_matrices all = view(x, 0, N);
        coreflow_model *whole = NULL;
        ok = st == COREFLOW_OK && coreflow_fit(&all, &single, &whole) == COREFLOW_OK;
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
        printf("rank %d/%d: %zu samples, %d allreduce calls, %lld doubles summed, "
               "max |U - U_single|, |V - V_single| = %.2e -> %s\n",
               rank, size, last - first, ctx.calls, ctx.sent, diff, ok ? "ok" : "FAILED");
        coreflow_model_free(whole);
    }
    coreflow_model_free(model);
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
