/*
 * Exercises the C ABI through the shared library: fitting on a planted
 * low-rank set, model access, encode/decode, and every documented error path.
 * Compiled with -std=c99 -Wall -Wextra -Wpedantic -Werror.
 */
#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "check.h"

/* Box-Muller on uniform01: a small seeded Gaussian source. */
static double gaussian(void) {
    double u = uniform01(), v = uniform01();
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Orthonormal columns by modified Gram-Schmidt (column-major m x r). */
static void random_orthonormal(double *q, size_t m, size_t r) {
    for (size_t j = 0; j < r; j++) {
        for (size_t i = 0; i < m; i++) q[i + j * m] = gaussian();
        for (size_t k = 0; k < j; k++) {
            double d = 0;
            for (size_t i = 0; i < m; i++) d += q[i + k * m] * q[i + j * m];
            for (size_t i = 0; i < m; i++) q[i + j * m] -= d * q[i + k * m];
        }
        double n = 0;
        for (size_t i = 0; i < m; i++) n += q[i + j * m] * q[i + j * m];
        n = sqrt(n);
        for (size_t i = 0; i < m; i++) q[i + j * m] /= n;
    }
}

enum { N = 60, M = 24, NC = 18, R = 3, S = 2 };

static int progress_calls = 0;
static int32_t count_progress(void *user, const coreflow_progress *p) {
    (void)user;
    if (p->stage == COREFLOW_STAGE_SUBSPACE) progress_calls++;
    return 0;
}
static int32_t cancel_progress(void *user, const coreflow_progress *p) {
    (void)user;
    (void)p;
    return 1;
}

static coreflow_matrices c_order_view(const double *data, size_t count) {
    return c_order_matrices(data, count, M, NC);
}

/* A host compiled against an older header has a smaller options struct.
 * The sized init (what the header's coreflow_fit_options_init macro calls)
 * writes only that prefix and records its size, and a fit with it takes the
 * defaults for the fields the host lacks: everything from `allreduce` on
 * (the first ABI v1 header), or `flow_noise_gap` (the second). Bytes past the
 * prefix are filled with a pattern that would crash a fit that read them as
 * pointers or take the block rule from garbage. */
static void check_older_host(const coreflow_matrices *train, size_t old_size) {
    coreflow_fit_options storage[2]; /* aligned room for the prefix and more */
    unsigned char *bytes = (unsigned char *)storage;
    memset(storage, 0xA5, sizeof storage);
    coreflow_fit_options_init_sized(storage, old_size);
    CHECK(storage[0].struct_size == old_size, "sized init recorded %zu, not %zu",
          storage[0].struct_size, old_size);
    int untouched = 1;
    for (size_t k = old_size; k < sizeof storage; k++) untouched &= bytes[k] == 0xA5;
    CHECK(untouched, "the sized init wrote past the host's struct");
    CHECK(storage[0].energy == 0.99 && storage[0].flow_steps == 4000, "sized init defaults");

    storage[0].rank_rows = R;
    storage[0].rank_cols = S;
    storage[0].threads = 1;
    storage[0].flow_steps = 0;
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_fit(train, &storage[0], &model);
    CHECK(st == COREFLOW_OK && model != NULL, "fit with an older struct: %s %s",
          coreflow_status_name(st), coreflow_last_error_message());
    coreflow_model_free(model);

    coreflow_sample_options so[2];
    memset(so, 0xA5, sizeof so);
    coreflow_sample_options_init_sized(so, offsetof(coreflow_sample_options, rtol));
    CHECK(so[0].struct_size == offsetof(coreflow_sample_options, rtol) && so[0].steps == 16,
          "sized sample options init");
}

int main(void) {
    /* Planted data X_i = U* C_i V*^T, C-order (N, M, NC), and a column-major copy. */
    static double ustar[M * R], vstar[NC * S], x[N * M * NC], xf[N * M * NC];
    random_orthonormal(ustar, M, R);
    random_orthonormal(vstar, NC, S);
    for (size_t i = 0; i < N; i++) {
        double c[R * S];
        for (size_t k = 0; k < R * S; k++) c[k] = gaussian() * (double)(R * S - k);
        for (size_t a = 0; a < M; a++)
            for (size_t b = 0; b < NC; b++) {
                double s = 0;
                for (size_t p = 0; p < R; p++)
                    for (size_t q = 0; q < S; q++)
                        s += ustar[a + p * M] * c[p + q * R] * vstar[b + q * NC];
                x[(i * M + a) * NC + b] = s;
                xf[a + M * (b + NC * i)] = s;
            }
    }

    CHECK(coreflow_abi_version() == COREFLOW_ABI_VERSION, "abi version %u", coreflow_abi_version());
    CHECK(strlen(coreflow_version()) > 0, "empty version");
    CHECK(strcmp(coreflow_status_name(COREFLOW_ERR_SHAPE), "COREFLOW_ERR_SHAPE") == 0, "status name");
    CHECK(strcmp(coreflow_status_name(12345), "COREFLOW_UNKNOWN_STATUS") == 0, "unknown status");

    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    CHECK(opts.struct_size == sizeof opts, "struct_size %zu", opts.struct_size);
    CHECK(opts.energy == 0.99 && opts.subspace_method == COREFLOW_SUBSPACE_METHOD_HOOI, "defaults");
    CHECK(opts.flow_steps == 4000 && opts.flow_hidden == 256 && opts.learning_rate == 1e-2, "flow defaults");
    CHECK(opts.flow_energy == 0.999 && opts.flow_noise_gap == 10.0, "flow block defaults");
    opts.rank_rows = R;
    opts.rank_cols = S;
    opts.threads = 1;
    opts.flow_steps = 0; /* geometry only for the first part */
    opts.progress = count_progress;

    coreflow_matrices train = c_order_view(x, N);
    coreflow_model *model = NULL;
    coreflow_status st = coreflow_fit(&train, &opts, &model);
    CHECK(st == COREFLOW_OK && model != NULL, "fit: %s %s", coreflow_status_name(st),
          coreflow_last_error_message());
    if (model == NULL) return 1;
    CHECK(progress_calls > 0, "progress never called");
    CHECK(strcmp(coreflow_last_error_message(), "") == 0, "message after success");
    check_older_host(&train, offsetof(coreflow_fit_options, allreduce));
    check_older_host(&train, offsetof(coreflow_fit_options, flow_noise_gap));

    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK(coreflow_model_get_info(model, &info) == COREFLOW_OK, "get_info");
    CHECK(info.rows == M && info.cols == NC && info.rank_rows == R && info.rank_cols == S, "dims");
    CHECK(info.core_dim == R * S && info.train_count == N && info.has_flow == 0, "info");
    CHECK(fabs(info.explained_energy - 1.0) < 1e-10, "explained %g", info.explained_energy);

    /* Subspaces: orthonormal and spanning the planted ones. */
    static double u[M * R], v[NC * S], mean[M * NC];
    CHECK(coreflow_model_subspaces(model, u, v) == COREFLOW_OK, "subspaces");
    double err = 0;
    for (size_t a = 0; a < M; a++)
        for (size_t b = 0; b < M; b++) {
            double p = 0, q = 0;
            for (size_t k = 0; k < R; k++) {
                p += u[a + k * M] * u[b + k * M];
                q += ustar[a + k * M] * ustar[b + k * M];
            }
            err += (p - q) * (p - q);
        }
    CHECK(sqrt(err / (2.0 * R)) < 1e-8, "subspace distance %g", sqrt(err / (2.0 * R)));
    CHECK(coreflow_model_mean(model, mean) == COREFLOW_OK && mean[0] == 0.0, "mean of uncentered");

    /* Encode/decode: X inside the span comes back. */
    size_t ws_bytes = 0;
    CHECK(coreflow_workspace_size(model, COREFLOW_OP_ENCODE, 4, NULL, &ws_bytes) == COREFLOW_OK, "ws");
    size_t dec_bytes = 0;
    CHECK(coreflow_workspace_size(model, COREFLOW_OP_DECODE, 4, NULL, &dec_bytes) == COREFLOW_OK, "ws");
    if (dec_bytes > ws_bytes) ws_bytes = dec_bytes;
    unsigned char *ws = malloc(ws_bytes + 1);
    double cores[4 * R * S];
    static double back[4 * M * NC];
    coreflow_matrices four = c_order_view(x, 4);
    /* An odd address: any alignment is accepted. */
    CHECK(coreflow_encode(model, &four, cores, ws + 1, ws_bytes) == COREFLOW_OK, "encode: %s",
          coreflow_last_error_message());
    coreflow_matrices_mut out = {back, 4, M, NC, 1, 4, 4 * M}; /* interleaved: sample index fastest */
    CHECK(coreflow_decode(model, cores, &out, ws + 1, ws_bytes) == COREFLOW_OK, "decode: %s",
          coreflow_last_error_message());
    double num = 0, den = 0;
    for (size_t i = 0; i < 4; i++)
        for (size_t a = 0; a < M; a++)
            for (size_t b = 0; b < NC; b++) {
                double d = back[i + 4 * (a + M * b)] - x[(i * M + a) * NC + b];
                num += d * d;
                den += x[(i * M + a) * NC + b] * x[(i * M + a) * NC + b];
            }
    CHECK(sqrt(num / den) < 1e-12, "round trip %g", sqrt(num / den));

    /* Column-major (M, NC, N) data gives the same model. */
    coreflow_matrices trainf = {xf, NULL, N, M, NC, M * NC, 1, M};
    coreflow_model *model_f = NULL;
    CHECK(coreflow_fit(&trainf, &opts, &model_f) == COREFLOW_OK, "fit col-major");
    static double uf[M * R], vf[NC * S];
    coreflow_model_subspaces(model_f, uf, vf);
    double du = 0;
    for (size_t k = 0; k < M * R; k++) du = fmax(du, fabs(uf[k] - u[k]));
    for (size_t k = 0; k < NC * S; k++) du = fmax(du, fabs(vf[k] - v[k]));
    CHECK(du < 1e-10, "layouts differ by %g", du);
    coreflow_model_free(model_f);

    /* Incomplete data: a mask with 30 % missing, then completion of new matrices. */
    static uint8_t mask[N * M * NC];
    for (size_t k = 0; k < N * M * NC; k++) mask[k] = uniform01() >= 0.3;
    coreflow_matrices masked = train;
    masked.mask = mask;
    coreflow_model *model_m = NULL;
    CHECK(coreflow_fit(&masked, &opts, &model_m) == COREFLOW_OK, "masked fit: %s",
          coreflow_last_error_message());
    coreflow_model_info minfo;
    memset(&minfo, 0, sizeof minfo);
    minfo.struct_size = sizeof minfo;
    coreflow_model_get_info(model_m, &minfo);
    CHECK(minfo.masked == 1 && minfo.completion_iterations > 0, "masked info");
    size_t comp_bytes = 0;
    CHECK(coreflow_workspace_size(model_m, COREFLOW_OP_COMPLETE, 4, NULL, &comp_bytes) == COREFLOW_OK,
          "ws complete");
    unsigned char *cws = malloc(comp_bytes);
    static double filled[4 * M * NC];
    coreflow_matrices partial = masked;
    partial.count = 4;
    coreflow_matrices_mut fout = {filled, 4, M, NC, M * NC, NC, 1};
    CHECK(coreflow_complete(model_m, &partial, &fout, cws, comp_bytes) == COREFLOW_OK, "complete: %s",
          coreflow_last_error_message());
    double cnum = 0, cden = 0;
    int observed_kept = 1;
    for (size_t k = 0; k < 4 * M * NC; k++) {
        if (mask[k]) {
            observed_kept &= filled[k] == x[k];
        } else {
            cnum += (filled[k] - x[k]) * (filled[k] - x[k]);
            cden += x[k] * x[k];
        }
    }
    CHECK(observed_kept, "observed entries changed");
    CHECK(sqrt(cnum / cden) < 1e-6, "completion error %g", sqrt(cnum / cden));
    coreflow_matrices_mut in_place = {x, 4, M, NC, M * NC, NC, 1};
    EXPECT_ERROR(coreflow_complete(model_m, &partial, &in_place, cws, comp_bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "overlaps");
    EXPECT_ERROR(coreflow_complete(model_m, &partial, &fout, cws, 16), COREFLOW_ERR_WORKSPACE, "ws_bytes");
    free(cws);
    coreflow_model_free(model_m);

    /* The flow: a small network, then sampling and scoring. */
    coreflow_fit_options fopts = opts;
    fopts.flow_steps = 300;
    fopts.flow_hidden = 32;
    fopts.flow_layers = 2;
    fopts.flow_time_freqs = 4;
    fopts.batch_size = 32;
    fopts.progress = NULL;
    coreflow_model *model_flow = NULL;
    CHECK(coreflow_fit(&train, &fopts, &model_flow) == COREFLOW_OK, "flow fit: %s", coreflow_last_error_message());
    coreflow_model_info finfo;
    memset(&finfo, 0, sizeof finfo);
    finfo.struct_size = sizeof finfo;
    coreflow_model_get_info(model_flow, &finfo);
    CHECK(finfo.core_model == COREFLOW_CORE_MODEL_FLOW || finfo.core_model == COREFLOW_CORE_MODEL_GAUSSIAN
              || finfo.core_model == COREFLOW_CORE_MODEL_MIXTURE,
          "core model %d", (int)finfo.core_model);
    coreflow_sample_options sopt;
    coreflow_sample_options_init(&sopt);
    CHECK(sopt.solver == COREFLOW_SOLVER_RK4 && sopt.steps == 16, "sample defaults");
    size_t s_bytes = 0, l_bytes = 0;
    CHECK(coreflow_workspace_size(model_flow, COREFLOW_OP_SAMPLE, 4, &sopt, &s_bytes) == COREFLOW_OK, "ws sample");
    CHECK(coreflow_workspace_size(model_flow, COREFLOW_OP_LOG_PROB, 4, &sopt, &l_bytes) == COREFLOW_OK, "ws lp");
    if (l_bytes > s_bytes) s_bytes = l_bytes;
    unsigned char *sws = malloc(s_bytes);
    static double gen[4 * M * NC], gen2[4 * M * NC];
    coreflow_matrices_mut gout = {gen, 4, M, NC, M * NC, NC, 1};
    CHECK(coreflow_sample(model_flow, &sopt, 11, 0, &gout, sws, s_bytes) == COREFLOW_OK, "sample: %s",
          coreflow_last_error_message());
    /* Two calls of 1 and 3 samples give the same matrices. */
    coreflow_matrices_mut g1 = {gen2, 1, M, NC, M * NC, NC, 1};
    coreflow_matrices_mut g3 = {gen2 + M * NC, 3, M, NC, M * NC, NC, 1};
    coreflow_sample(model_flow, &sopt, 11, 0, &g1, sws, s_bytes);
    coreflow_sample(model_flow, &sopt, 11, 1, &g3, sws, s_bytes);
    CHECK(memcmp(gen, gen2, sizeof gen) == 0, "split sampling differs");
    double lp[4], res[4];
    coreflow_matrices genv = {gen, NULL, 4, M, NC, M * NC, NC, 1};
    CHECK(coreflow_log_prob(model_flow, NULL, &genv, lp, res, sws, s_bytes) == COREFLOW_OK, "log_prob: %s",
          coreflow_last_error_message());
    CHECK(isfinite(lp[0]) && res[0] < 1e-12, "log_prob %g residual %g", lp[0], res[0]);
    /* Save and load through a memory image: bitwise the same samples. */
    size_t img_len = 0;
    CHECK(coreflow_model_to_bytes(model_flow, NULL, 0, &img_len) == COREFLOW_OK && img_len > 0, "to_bytes len");
    unsigned char *img = malloc(img_len);
    CHECK(coreflow_model_to_bytes(model_flow, img, img_len, &img_len) == COREFLOW_OK, "to_bytes");
    coreflow_model *reloaded = NULL;
    CHECK(coreflow_model_from_bytes(img, img_len, &reloaded) == COREFLOW_OK, "from_bytes: %s",
          coreflow_last_error_message());
    coreflow_sample(reloaded, &sopt, 11, 0, &g1, sws, s_bytes);
    CHECK(memcmp(gen, gen2, M * NC * sizeof(double)) == 0, "reloaded model samples differently");
    img[img_len / 2] ^= 0x10;
    coreflow_model *corrupt = NULL;
    EXPECT_ERROR(coreflow_model_from_bytes(img, img_len, &corrupt), COREFLOW_ERR_FORMAT, "checksum");
    EXPECT_ERROR(coreflow_model_load("/nonexistent/model.cfm", &corrupt), COREFLOW_ERR_IO, "path");
    coreflow_sample_options bad_so = sopt;
    bad_so.solver = 9;
    EXPECT_ERROR(coreflow_sample(model_flow, &bad_so, 1, 0, &gout, sws, s_bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "solver");
    free(img);
    free(sws);
    coreflow_model_free(reloaded);
    coreflow_model_free(model_flow);

    /* Bad input: each with its own status and a message naming the argument. */
    coreflow_model *bad = NULL;
    EXPECT_ERROR(coreflow_fit(NULL, &opts, &bad), COREFLOW_ERR_NULL, "train");
    EXPECT_ERROR(coreflow_fit(&train, NULL, &bad), COREFLOW_ERR_NULL, "opts");
    EXPECT_ERROR(coreflow_fit(&train, &opts, NULL), COREFLOW_ERR_NULL, "out");
    coreflow_matrices empty = c_order_view(x, 0);
    EXPECT_ERROR(coreflow_fit(&empty, &opts, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "train");
    coreflow_matrices zero_dim = c_order_view(x, N);
    zero_dim.cols = 0;
    EXPECT_ERROR(coreflow_fit(&zero_dim, &opts, &bad), COREFLOW_ERR_SHAPE, "train");
    coreflow_fit_options big = opts;
    big.rank_rows = M + 1;
    EXPECT_ERROR(coreflow_fit(&train, &big, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "opts->rank_rows");
    coreflow_fit_options small = opts;
    small.struct_size = 8;
    EXPECT_ERROR(coreflow_fit(&train, &small, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "struct_size");
    coreflow_fit_options flow = opts;
    flow.flow_hidden = 0;
    flow.flow_steps = 10;
    EXPECT_ERROR(coreflow_fit(&train, &flow, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_hidden");
    /* Checks deeper in the library name the C fields the caller set. */
    coreflow_fit_options iters = opts;
    iters.subspace_max_iter = 0;
    EXPECT_ERROR(coreflow_fit(&train, &iters, &bad), COREFLOW_ERR_INVALID_ARGUMENT,
                 "opts->subspace_max_iter");
    coreflow_fit_options tol = opts;
    tol.subspace_tol = -1.0;
    EXPECT_ERROR(coreflow_fit(&train, &tol, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "opts->subspace_tol");
    coreflow_fit_options layers = opts;
    layers.flow_layers = 0;
    layers.flow_steps = 10;
    EXPECT_ERROR(coreflow_fit(&train, &layers, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_layers");
    coreflow_fit_options gap = opts;
    gap.flow_noise_gap = 0.5;
    gap.flow_steps = 10;
    EXPECT_ERROR(coreflow_fit(&train, &gap, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "opts->flow_noise_gap");
    coreflow_sample_options so;
    coreflow_sample_options_init(&so);
    size_t sbytes = 0;
    EXPECT_ERROR(coreflow_workspace_size(model, COREFLOW_OP_SAMPLE, 4, &so, &sbytes), COREFLOW_ERR_UNSUPPORTED,
                 "flow_steps");
    coreflow_matrices_mut sout = {back, 4, M, NC, M * NC, NC, 1};
    EXPECT_ERROR(coreflow_sample(model, &so, 1, 0, &sout, ws, ws_bytes), COREFLOW_ERR_UNSUPPORTED, "sample");
    coreflow_fit_options method = opts;
    method.subspace_method = 7;
    EXPECT_ERROR(coreflow_fit(&train, &method, &bad), COREFLOW_ERR_INVALID_ARGUMENT, "subspace_method");
    coreflow_fit_options cancel = opts;
    cancel.progress = cancel_progress;
    EXPECT_ERROR(coreflow_fit(&train, &cancel, &bad), COREFLOW_ERR_CANCELLED, "cancel");
    double saved = x[5];
    x[5] = NAN;
    EXPECT_ERROR(coreflow_fit(&train, &opts, &bad), COREFLOW_ERR_NON_FINITE, "train");
    x[5] = INFINITY;
    EXPECT_ERROR(coreflow_encode(model, &four, cores, ws, ws_bytes), COREFLOW_ERR_NON_FINITE, "input");
    x[5] = saved;
    CHECK(bad == NULL, "out written on failure");

    EXPECT_ERROR(coreflow_encode(NULL, &four, cores, ws, ws_bytes), COREFLOW_ERR_NULL, "m");
    EXPECT_ERROR(coreflow_encode(model, NULL, cores, ws, ws_bytes), COREFLOW_ERR_NULL, "input");
    EXPECT_ERROR(coreflow_encode(model, &four, NULL, ws, ws_bytes), COREFLOW_ERR_NULL, "cores");
    EXPECT_ERROR(coreflow_encode(model, &four, cores, NULL, 64), COREFLOW_ERR_NULL, "ws");
    EXPECT_ERROR(coreflow_encode(model, &four, cores, ws, 8), COREFLOW_ERR_WORKSPACE, "ws_bytes");
    coreflow_matrices wrong = four;
    wrong.rows = M - 1;
    wrong.sample_stride = (M - 1) * NC;
    EXPECT_ERROR(coreflow_encode(model, &wrong, cores, ws, ws_bytes), COREFLOW_ERR_SHAPE, "input");
    coreflow_matrices_mut alias = {back, 4, M, NC, 0, NC, 1};
    EXPECT_ERROR(coreflow_decode(model, cores, &alias, ws, ws_bytes), COREFLOW_ERR_SHAPE, "out");
    coreflow_matrices_mut alias2 = {back, 2, M, NC, M * NC, 1, 1};
    EXPECT_ERROR(coreflow_decode(model, cores, &alias2, ws, ws_bytes), COREFLOW_ERR_SHAPE, "alias");
    EXPECT_ERROR(coreflow_workspace_size(model, 42, 1, NULL, &ws_bytes), COREFLOW_ERR_INVALID_ARGUMENT, "op");
    EXPECT_ERROR(coreflow_workspace_size(model, COREFLOW_OP_ENCODE, 1, NULL, NULL), COREFLOW_ERR_NULL, "bytes");
    coreflow_model_info tiny;
    tiny.struct_size = 4;
    EXPECT_ERROR(coreflow_model_get_info(model, &tiny), COREFLOW_ERR_INVALID_ARGUMENT, "struct_size");
    EXPECT_ERROR(coreflow_model_subspaces(model, NULL, v), COREFLOW_ERR_NULL, "u");
    EXPECT_ERROR(coreflow_model_mean(model, NULL), COREFLOW_ERR_NULL, "mean");

    coreflow_model_free(NULL);
    coreflow_model_free(model);
    free(ws);

    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
