/*
 * Exercises coreflow_impute through the C ABI: many draws of one matrix
 * through a partial of sample stride 0, observed entries kept bitwise,
 * missing ones spread around the MAP completion, draws that depend only on
 * (seed, index), and every documented error path (naming its argument,
 * leaving `out` untouched).
 * Compiled with -std=c99 -Wall -Wextra -Wpedantic -Werror.
 */
#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "check.h"

enum { N = 300, M = 8, NC = 6, R = 2, S = 2, K = 100 };

static double normal01(void) {
    double u1 = uniform01(), u2 = uniform01();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int main(void) {
    /* Rank (2, 2) matrices with Gaussian cores plus noise, C-order (N, M, NC). */
    double *x = malloc(sizeof(double) * N * M * NC);
    double *draws = malloc(sizeof(double) * K * M * NC);
    double *parts = malloc(sizeof(double) * K * M * NC);
    if (!x || !draws || !parts) return 1;
    for (size_t i = 0; i < N; i++) {
        double c[4] = {2.0 * normal01(), normal01(), 0.5 * normal01(), 0.5 * normal01()};
        for (size_t a = 0; a < M; a++)
            for (size_t b = 0; b < NC; b++) {
                double ua[2] = {sin(0.7 * (double)(a + 1)), cos(0.4 * (double)a)};
                double vb[2] = {cos(0.5 * (double)(b + 1)), sin(0.9 * (double)b + 0.3)};
                x[(i * M + a) * NC + b] = ua[0] * (c[0] * vb[0] + c[2] * vb[1]) +
                                          ua[1] * (c[1] * vb[0] + c[3] * vb[1]) + 0.05 * normal01();
            }
    }
    coreflow_matrices train = c_order_matrices(x, N, M, NC);
    coreflow_fit_options opts;
    coreflow_fit_options_init(&opts);
    opts.rank_rows = R;
    opts.rank_cols = S;
    opts.threads = 1;
    opts.core_model = COREFLOW_CORE_MODEL_GAUSSIAN;
    coreflow_model *model = NULL;
    CHECK(coreflow_fit(&train, &opts, &model) == COREFLOW_OK, "fit: %s", coreflow_last_error_message());
    if (model == NULL) return 1;

    /* One matrix with a third of its entries missing (NaN, no mask). */
    double y[M * NC];
    for (size_t k = 0; k < M * NC; k++) y[k] = (k % 3 == 1) ? NAN : x[k];
    coreflow_matrices one = c_order_matrices(y, 1, M, NC);
    coreflow_matrices repeated = one;
    repeated.count = K;
    repeated.sample_stride = 0;

    size_t bytes = 0;
    CHECK(coreflow_workspace_size(model, COREFLOW_OP_IMPUTE, K, NULL, &bytes) == COREFLOW_OK && bytes > 0,
          "ws impute: %s", coreflow_last_error_message());
    unsigned char *ws = malloc(bytes);
    if (!ws) return 1;
    coreflow_matrices_mut out = c_order_matrices_mut(draws, K, M, NC);
    CHECK(coreflow_impute(model, NULL, 42, 0, &repeated, &out, ws, bytes) == COREFLOW_OK, "impute: %s",
          coreflow_last_error_message());

    /* The MAP completion, for the centre of the draws. */
    double map[M * NC];
    size_t cbytes = 0;
    coreflow_workspace_size(model, COREFLOW_OP_COMPLETE, 1, NULL, &cbytes);
    unsigned char *cws = malloc(cbytes ? cbytes : 1);
    coreflow_matrices_mut map_out = c_order_matrices_mut(map, 1, M, NC);
    CHECK(coreflow_complete(model, &one, &map_out, cws, cbytes) == COREFLOW_OK, "complete: %s",
          coreflow_last_error_message());
    free(cws);
    coreflow_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    coreflow_model_get_info(model, &info);

    int kept = 1, spread = 1, centred = 1;
    for (size_t e = 0; e < M * NC; e++) {
        if (e % 3 != 1) {
            for (size_t j = 0; j < K; j++) kept &= memcmp(&draws[j * M * NC + e], &y[e], sizeof(double)) == 0;
            continue;
        }
        double mean = 0, var = 0;
        for (size_t j = 0; j < K; j++) mean += draws[j * M * NC + e] / K;
        for (size_t j = 0; j < K; j++) var += pow(draws[j * M * NC + e] - mean, 2) / (K - 1);
        /* At least the noise level; the mean within 5 standard errors of the MAP. */
        spread &= var > 0.5 * info.noise_variance;
        centred &= fabs(mean - map[e]) < 5.0 * sqrt(var / K);
    }
    CHECK(kept, "observed entries changed");
    CHECK(spread, "draws do not spread (noise variance %g)", info.noise_variance);
    CHECK(centred, "draws are not centred on the MAP completion");

    /* The support of a draw: the training range, exactly, and a finite
       positive noise bound; every drawn entry within the range. */
    double lo = x[0], hi = x[0];
    for (size_t k = 0; k < N * M * NC; k++) {
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    CHECK(info.data_min == lo && info.data_max == hi, "range [%g, %g], training [%g, %g]", info.data_min,
          info.data_max, lo, hi);
    CHECK(isfinite(info.noise_bound) && info.noise_bound > 0, "noise bound %g", info.noise_bound);
    int inside = 1;
    for (size_t k = 0; k < K * M * NC; k++) inside &= draws[k] >= lo && draws[k] <= hi;
    CHECK(inside, "a drawn entry outside the training range");

    /* 37 + 63 draws with first_index 0 and 37 give the same bits. */
    coreflow_matrices r37 = repeated, r63 = repeated;
    r37.count = 37;
    r63.count = 63;
    coreflow_matrices_mut o37 = c_order_matrices_mut(parts, 37, M, NC);
    coreflow_matrices_mut o63 = c_order_matrices_mut(parts + 37 * M * NC, 63, M, NC);
    CHECK(coreflow_impute(model, NULL, 42, 0, &r37, &o37, ws, bytes) == COREFLOW_OK, "impute 37");
    CHECK(coreflow_impute(model, NULL, 42, 37, &r63, &o63, ws, bytes) == COREFLOW_OK, "impute 63");
    CHECK(memcmp(parts, draws, sizeof(double) * K * M * NC) == 0, "split calls differ");

    /* The level re-estimated on the observed entries: observed entries
       copied, 37 + 63 draws the same bits, and the default is the fitted
       level (an explicit COREFLOW_IMPUTE_LEVEL_FITTED gives NULL's draws). */
    {
        coreflow_sample_options lv;
        coreflow_sample_options_init(&lv);
        CHECK(lv.impute_level == COREFLOW_IMPUTE_LEVEL_FITTED, "impute_level default");
        lv.impute_level = COREFLOW_IMPUTE_LEVEL_FITTED;
        CHECK(coreflow_impute(model, &lv, 42, 0, &r37, &o37, ws, bytes) == COREFLOW_OK, "fitted 37");
        CHECK(memcmp(parts, draws, sizeof(double) * 37 * M * NC) == 0, "explicit fitted level differs");
        lv.impute_level = COREFLOW_IMPUTE_LEVEL_OBSERVED;
        static double obs_all[K * M * NC];
        coreflow_matrices_mut oa = c_order_matrices_mut(obs_all, K, M, NC);
        CHECK(coreflow_impute(model, &lv, 42, 0, &repeated, &oa, ws, bytes) == COREFLOW_OK,
              "impute observed: %s", coreflow_last_error_message());
        CHECK(coreflow_impute(model, &lv, 42, 0, &r37, &o37, ws, bytes) == COREFLOW_OK, "observed 37");
        CHECK(coreflow_impute(model, &lv, 42, 37, &r63, &o63, ws, bytes) == COREFLOW_OK, "observed 63");
        CHECK(memcmp(parts, obs_all, sizeof(double) * K * M * NC) == 0, "observed: split calls differ");
        int copied = 1;
        for (size_t k = 0; k < K; k++)
            for (size_t e = 0; e < M * NC; e++)
                if (!isnan(y[e])) copied &= memcmp(&obs_all[k * M * NC + e], &y[e], sizeof(double)) == 0;
        CHECK(copied, "observed level: observed entries not copied");
    }

    /* Errors: each names its argument and leaves `out` untouched. */
    for (size_t k = 0; k < K * M * NC; k++) parts[k] = -7.0;
    coreflow_matrices_mut all = c_order_matrices_mut(parts, K, M, NC);
    EXPECT_ERROR(coreflow_impute(NULL, NULL, 0, 0, &repeated, &all, ws, bytes), COREFLOW_ERR_NULL, "m");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, NULL, &all, ws, bytes), COREFLOW_ERR_NULL, "partial");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &repeated, NULL, ws, bytes), COREFLOW_ERR_NULL, "out");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &repeated, &all, ws, 16), COREFLOW_ERR_WORKSPACE,
                 "ws_bytes");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &repeated, &all, NULL, bytes), COREFLOW_ERR_NULL, "ws");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &r37, &all, ws, bytes), COREFLOW_ERR_SHAPE, "out");
    coreflow_matrices wrong = repeated;
    wrong.cols = NC - 1;
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &wrong, &all, ws, bytes), COREFLOW_ERR_SHAPE, "partial");
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, UINT64_MAX, &repeated, &all, ws, bytes),
                 COREFLOW_ERR_INVALID_ARGUMENT, "first_index");
    double yi[M * NC];
    memcpy(yi, y, sizeof yi);
    yi[0] = INFINITY;
    coreflow_matrices inf = repeated;
    inf.data = yi;
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &inf, &all, ws, bytes), COREFLOW_ERR_NON_FINITE,
                 "partial");
    coreflow_matrices_mut in_place = c_order_matrices_mut(y, 1, M, NC);
    EXPECT_ERROR(coreflow_impute(model, NULL, 0, 0, &one, &in_place, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "overlaps");
    coreflow_sample_options so;
    coreflow_sample_options_init(&so);
    so.steps = 0;
    EXPECT_ERROR(coreflow_impute(model, &so, 0, 0, &repeated, &all, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "steps");
    coreflow_sample_options_init(&so);
    so.impute_level = COREFLOW_IMPUTE_LEVEL_OBSERVED + 1;
    EXPECT_ERROR(coreflow_impute(model, &so, 0, 0, &repeated, &all, ws, bytes), COREFLOW_ERR_INVALID_ARGUMENT,
                 "impute_level");
    EXPECT_ERROR(coreflow_workspace_size(model, COREFLOW_OP_IMPUTE + 1, K, NULL, &bytes),
                 COREFLOW_ERR_INVALID_ARGUMENT, "op");
    int untouched = 1;
    for (size_t k = 0; k < K * M * NC; k++) untouched &= parts[k] == -7.0;
    CHECK(untouched, "out written by a failed call");

    /* A geometry-only model cannot impute. */
    opts.flow_steps = 0;
    opts.core_model = COREFLOW_CORE_MODEL_AUTO;
    coreflow_model *geo = NULL;
    CHECK(coreflow_fit(&train, &opts, &geo) == COREFLOW_OK, "geometry fit");
    EXPECT_ERROR(coreflow_impute(geo, NULL, 0, 0, &repeated, &all, ws, bytes), COREFLOW_ERR_UNSUPPORTED, "m");
    EXPECT_ERROR(coreflow_workspace_size(geo, COREFLOW_OP_IMPUTE, K, NULL, &bytes), COREFLOW_ERR_UNSUPPORTED,
                 "m");
    coreflow_model_free(geo);

    coreflow_model_free(model);
    free(ws);
    free(x);
    free(draws);
    free(parts);
    printf("test_impute: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
