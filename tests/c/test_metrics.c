/*
 * Exercises coreflow_metrics and coreflow_metrics_with_train through the C
 * ABI: identical sets score zero, a shifted set scores the shift, a smaller
 * (older) result struct is filled only up to its struct_size, strided views
 * give the same scores, the 1-NN accuracy and the closest-record ratio on a
 * hand-computed case and on copies, the sized options init writes only an
 * older host's prefix, and every documented error path names its argument.
 * Compiled with -std=c99 -Wall -Wextra -Wpedantic -Werror.
 */
#define TEST_RNG_SEED 0x2545F4914F6CDD1Dull
#include "check.h"

enum { N = 12, M = 6, NC = 5 };

int main(void) {
    /* A C-order (N, M, NC) set of rank-one matrices plus noise. */
    double *a = malloc(sizeof(double) * N * M * NC);
    double *b = malloc(sizeof(double) * N * M * NC);
    double *f = malloc(sizeof(double) * M * NC * N); /* column-major (M, NC, N) copy of a */
    if (!a || !b || !f) return 1;
    for (size_t i = 0; i < N; i++) {
        double s = 0.5 + uniform01();
        for (size_t r = 0; r < M; r++)
            for (size_t c = 0; c < NC; c++) {
                double x = s * sin(0.5 * (double)(r + 1)) * cos(0.3 * (double)c) + 0.05 * uniform01();
                a[(i * M + r) * NC + c] = x;
                f[r + c * M + i * M * NC] = x;
            }
    }
    coreflow_matrices real = {a, NULL, N, M, NC, M * NC, NC, 1};
    coreflow_matrices real_f = {f, NULL, N, M, NC, M * NC, 1, M};

    coreflow_metrics_options o;
    memset(&o, 0xff, sizeof o);
    coreflow_metrics_options_init(&o);
    CHECK(o.struct_size == sizeof o, "struct_size %zu", o.struct_size);
    CHECK(o.threads == 0 && o.top_k == 10, "defaults %u %u", o.threads, o.top_k);
    /* The macro passes sizeof *(o); the function itself ignores NULL. */
    (coreflow_metrics_options_init)(NULL);
    coreflow_metrics_options_init_sized(NULL, sizeof o);

    /* An older host's smaller struct: the sized init writes only its prefix
       and records its size. */
    {
        coreflow_metrics_options prefix[2];
        unsigned char *bytes = (unsigned char *)prefix;
        size_t old_size = offsetof(coreflow_metrics_options, top_k);
        memset(prefix, 0xA5, sizeof prefix);
        coreflow_metrics_options_init_sized(prefix, old_size);
        CHECK(prefix[0].struct_size == old_size && prefix[0].threads == 0, "sized init %zu %u",
              prefix[0].struct_size, prefix[0].threads);
        int untouched = 1;
        for (size_t k = old_size; k < sizeof prefix; k++) untouched &= bytes[k] == 0xA5;
        CHECK(untouched, "the sized init wrote past the host's struct");
        /* A size below sizeof(size_t) is ignored. */
        coreflow_metrics_options_init_sized(prefix, sizeof(size_t) - 1);
        CHECK(prefix[0].struct_size == old_size, "short size ignored");
    }

    /* A set against itself: every error is zero; MMD^2 (unbiased) near 0. */
    coreflow_metrics_result res;
    res.struct_size = sizeof res;
    CHECK(coreflow_metrics(&real, &real, NULL, &res) == COREFLOW_OK, "%s", coreflow_last_error_message());
    CHECK(res.struct_size == sizeof res, "struct_size %zu", res.struct_size);
    CHECK(res.sve == 0.0 && res.topk_w1 == 0.0 && res.mean_error == 0.0, "self %g %g %g", res.sve,
          res.topk_w1, res.mean_error);
    CHECK(res.rowcov_error == 0.0 && res.colcov_error == 0.0, "cov %g %g", res.rowcov_error,
          res.colcov_error);
    CHECK(fabs(res.mmd2) < 0.2, "mmd2 %g", res.mmd2);

    /* A column-major view of the same data scores the same, with 1 thread. */
    for (size_t i = 0; i < N * M * NC; i++) b[i] = a[i] + 0.1;
    coreflow_matrices gen = {b, NULL, N, M, NC, M * NC, NC, 1};
    coreflow_metrics_result r1, r2;
    r1.struct_size = sizeof r1;
    r2.struct_size = sizeof r2;
    o.threads = 1;
    CHECK(coreflow_metrics(&real, &gen, &o, &r1) == COREFLOW_OK, "%s", coreflow_last_error_message());
    CHECK(coreflow_metrics(&real_f, &gen, NULL, &r2) == COREFLOW_OK, "%s", coreflow_last_error_message());
    CHECK(fabs(r1.sve - r2.sve) <= 1e-12 * r1.sve && fabs(r1.mmd2 - r2.mmd2) <= 1e-12 + 1e-9 * fabs(r1.mmd2),
          "layouts %g %g / %g %g", r1.sve, r2.sve, r1.mmd2, r2.mmd2);
    /* A constant shift of 0.1 moves the mean by 0.1 sqrt(M NC); covariances are unchanged. */
    double rms = 0.0;
    for (size_t i = 0; i < N * M * NC; i++) rms += a[i] * a[i];
    rms = sqrt(rms / N);
    double want = 0.1 * sqrt((double)(M * NC)) / rms;
    CHECK(fabs(r1.mean_error - want) < 1e-12, "mean error %.15g want %.15g", r1.mean_error, want);
    CHECK(r1.rowcov_error < 1e-12 && r1.colcov_error < 1e-12, "cov %g %g", r1.rowcov_error,
          r1.colcov_error);
    CHECK(r1.sve > 0.0 && r1.topk_w1 > 0.0 && r1.mmd2 > 0.0, "%g %g %g", r1.sve, r1.topk_w1, r1.mmd2);

    /* top_k = 1 scores the first singular value only. */
    o.top_k = 1;
    coreflow_metrics_result r3;
    r3.struct_size = sizeof r3;
    CHECK(coreflow_metrics(&real, &gen, &o, &r3) == COREFLOW_OK, "%s", coreflow_last_error_message());
    CHECK(r3.sve == r1.sve && r3.topk_w1 != r1.topk_w1, "top_k %g %g", r3.topk_w1, r1.topk_w1);

    /* An older host's smaller options struct gets the defaults for the rest
       (struct_size covering threads only is below the v1 size: rejected). */
    coreflow_metrics_options old = o;
    old.struct_size = offsetof(coreflow_metrics_options, top_k);
    EXPECT_ERROR(coreflow_metrics(&real, &gen, &old, &r3), COREFLOW_ERR_INVALID_ARGUMENT, "o->struct_size");

    /* A larger result struct_size (a newer host) is accepted and clamped. */
    struct {
        coreflow_metrics_result r;
        double extra;
    } big;
    big.r.struct_size = sizeof big;
    big.extra = 42.0;
    CHECK(coreflow_metrics(&real, &gen, NULL, &big.r) == COREFLOW_OK, "%s", coreflow_last_error_message());
    CHECK(big.r.struct_size == sizeof(coreflow_metrics_result) && big.extra == 42.0, "clamped %zu",
          big.r.struct_size);

    /* Without a training set the closest-record ratio is NaN; the 1-NN
       accuracy of a set against itself is 0 (every nearest neighbour is the
       twin in the other set). */
    CHECK(isnan(res.dcr_ratio) && res.nn_accuracy == 0.0, "self %g %g", res.dcr_ratio, res.nn_accuracy);

    /* Hand-computed 1 x 1 case. Training set {0, 10}; real {0.5, 4, 8}
       (closest distances 0.5, 4, 2: median 2); generated {1, 7, 9.5, 3}
       (distances 1, 3, 0.5, 3: median 2). DCR = 1. Pooled 1-NN: 0.5 -> 1
       (other), 4 -> 3 (other), 8 -> 7 (other); 1 -> 0.5 (other), 7 -> 8
       (other), 9.5 -> 8 (other), 3 -> 4 (other): accuracy 0. */
    {
        double tr[2] = {0.0, 10.0}, re[3] = {0.5, 4.0, 8.0}, ge[4] = {1.0, 7.0, 9.5, 3.0};
        coreflow_matrices vt = {tr, NULL, 2, 1, 1, 1, 1, 1};
        coreflow_matrices vr = {re, NULL, 3, 1, 1, 1, 1, 1};
        coreflow_matrices vg = {ge, NULL, 4, 1, 1, 1, 1, 1};
        coreflow_metrics_result h;
        h.struct_size = sizeof h;
        CHECK(coreflow_metrics_with_train(&vr, &vg, &vt, NULL, &h) == COREFLOW_OK, "%s",
              coreflow_last_error_message());
        CHECK(h.dcr_ratio == 1.0 && h.nn_accuracy == 0.0, "hand %g %g", h.dcr_ratio, h.nn_accuracy);
        /* Generated far away: separable (1), and far from the training set. */
        double far[4] = {100.0, 101.0, 102.5, 104.0};
        coreflow_matrices vf = {far, NULL, 4, 1, 1, 1, 1, 1};
        CHECK(coreflow_metrics_with_train(&vr, &vf, &vt, NULL, &h) == COREFLOW_OK, "%s",
              coreflow_last_error_message());
        /* distances to 10: 90, 91, 92.5, 94 -> median 91.75; over 2. */
        CHECK(h.nn_accuracy == 1.0 && fabs(h.dcr_ratio - 91.75 / 2.0) < 1e-12, "far %g %g", h.nn_accuracy,
              h.dcr_ratio);
        /* NULL train is coreflow_metrics. */
        CHECK(coreflow_metrics_with_train(&vr, &vf, NULL, NULL, &h) == COREFLOW_OK, "%s",
              coreflow_last_error_message());
        CHECK(isnan(h.dcr_ratio) && h.nn_accuracy == 1.0, "no train %g", h.dcr_ratio);
    }

    /* Generated = copies of training matrices (the column-major copy of a
       as the training set, gen = a): the ratio is 0 to rounding. The real set
       is the shifted copy b. */
    {
        coreflow_metrics_result c;
        c.struct_size = sizeof c;
        CHECK(coreflow_metrics_with_train(&gen, &real, &real_f, &o, &c) == COREFLOW_OK, "%s",
              coreflow_last_error_message());
        CHECK(c.dcr_ratio >= 0.0 && c.dcr_ratio < 1e-6, "copies %g", c.dcr_ratio);
        /* An older host's struct, up to colcov_error: the new fields stay. */
        c.struct_size = offsetof(coreflow_metrics_result, nn_accuracy);
        c.nn_accuracy = c.dcr_ratio = 42.0;
        CHECK(coreflow_metrics_with_train(&gen, &real, &real_f, &o, &c) == COREFLOW_OK, "%s",
              coreflow_last_error_message());
        CHECK(c.struct_size == offsetof(coreflow_metrics_result, nn_accuracy) && c.nn_accuracy == 42.0 &&
                  c.dcr_ratio == 42.0,
              "older struct written past its size");
    }

    /* Errors: named arguments, out untouched. */
    coreflow_metrics_result keep;
    memset(&keep, 0, sizeof keep);
    keep.struct_size = sizeof keep;
    keep.sve = -1.0;
    EXPECT_ERROR(coreflow_metrics(NULL, &gen, NULL, &keep), COREFLOW_ERR_NULL, "real");
    EXPECT_ERROR(coreflow_metrics(&real, NULL, NULL, &keep), COREFLOW_ERR_NULL, "generated");
    EXPECT_ERROR(coreflow_metrics(&real, &gen, NULL, NULL), COREFLOW_ERR_NULL, "out");
    o.top_k = 0;
    EXPECT_ERROR(coreflow_metrics(&real, &gen, &o, &keep), COREFLOW_ERR_INVALID_ARGUMENT, "o->top_k");
    coreflow_matrices one = real;
    one.count = 1;
    EXPECT_ERROR(coreflow_metrics(&one, &gen, NULL, &keep), COREFLOW_ERR_INVALID_ARGUMENT, "real");
    coreflow_matrices narrow = gen;
    narrow.cols = NC - 1;
    EXPECT_ERROR(coreflow_metrics(&real, &narrow, NULL, &keep), COREFLOW_ERR_SHAPE, "generated");
    uint8_t *mask = malloc(N * M * NC);
    if (!mask) return 1;
    memset(mask, 1, N * M * NC);
    coreflow_matrices masked = gen;
    masked.mask = mask;
    EXPECT_ERROR(coreflow_metrics(&real, &masked, NULL, &keep), COREFLOW_ERR_INVALID_ARGUMENT, "generated");
    coreflow_matrices narrow_train = real;
    narrow_train.rows = M - 1;
    EXPECT_ERROR(coreflow_metrics_with_train(&gen, &real, &narrow_train, NULL, &keep), COREFLOW_ERR_SHAPE, "train");
    coreflow_matrices masked_train = real;
    masked_train.mask = mask;
    EXPECT_ERROR(coreflow_metrics_with_train(&gen, &real, &masked_train, NULL, &keep), COREFLOW_ERR_INVALID_ARGUMENT,
                 "train");
    coreflow_matrices no_data = real;
    no_data.data = NULL;
    EXPECT_ERROR(coreflow_metrics_with_train(&gen, &real, &no_data, NULL, &keep), COREFLOW_ERR_NULL, "train->data");
    /* The real (held-out) set is the training set: no denominator. */
    EXPECT_ERROR(coreflow_metrics_with_train(&real, &gen, &real, NULL, &keep), COREFLOW_ERR_INVALID_ARGUMENT, "train");
    b[7] = NAN;
    EXPECT_ERROR(coreflow_metrics(&real, &gen, NULL, &keep), COREFLOW_ERR_NON_FINITE, "generated");
    EXPECT_ERROR(coreflow_metrics_with_train(&real_f, &real, &gen, NULL, &keep), COREFLOW_ERR_NON_FINITE, "train");
    coreflow_metrics_result tiny;
    tiny.struct_size = 8;
    EXPECT_ERROR(coreflow_metrics(&real, &real, NULL, &tiny), COREFLOW_ERR_INVALID_ARGUMENT, "out->struct_size");
    CHECK(keep.sve == -1.0, "out written on failure");

    free(mask);
    free(a);
    free(b);
    free(f);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
