// CoreFlow from C++17 through coreflow.hpp: fit on column-major data (as a
// Fortran, Julia or Eigen host would hold it), print the summary, check an
// encode/decode round trip, and show how a failed call reports itself.
#include "coreflow.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

// `count` smooth rows x cols fields (a few separable waves with random
// amplitudes plus a little noise), column-major (rows, cols, count).
std::vector<double> make_fields(std::size_t rows, std::size_t cols, std::size_t count) {
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> amp(-1.0, 1.0), noise(-5e-4, 5e-4);
    std::vector<double> x(rows * cols * count);
    const double pi = 3.141592653589793;
    for (std::size_t i = 0; i < count; i++) {
        double a = amp(rng), b = amp(rng), c = amp(rng);
        for (std::size_t col = 0; col < cols; col++) {
            double t = double(col) / double(cols);
            for (std::size_t row = 0; row < rows; row++) {
                double y = double(row) / double(rows);
                x[row + rows * (col + cols * i)] =
                    a * std::sin(pi * y) * std::cos(2 * pi * t) +
                    b * std::sin(2 * pi * y) * std::sin(pi * t) +
                    c * std::cos(pi * y) * std::cos(3 * pi * t) + noise(rng);
            }
        }
    }
    return x;
}

int run() {
    const std::size_t rows = 28, cols = 20, count = 48;
    std::vector<double> x = make_fields(rows, cols, count);
    auto train = coreflow::MatrixBatch::column_major(x.data(), rows, cols, count);

    coreflow::FitOptions opts;
    opts.flow_steps = 0; // geometry only
    opts.rank_rows = 3;
    opts.rank_cols = 3;
    coreflow::Model model = coreflow::Model::fit(train, opts);

    coreflow_model_info info = model.info();
    std::printf("model: %zu x %zu, ranks %zu x %zu, explained energy %.6f\n", info.rows,
                info.cols, info.rank_rows, info.rank_cols, info.explained_energy);

    // One workspace for both directions, sized once for the largest batch.
    coreflow::Workspace ws(model, {COREFLOW_OP_ENCODE, COREFLOW_OP_DECODE}, count);
    std::vector<double> cores(count * info.core_dim);
    std::vector<double> back(x.size());
    model.encode(train, cores, ws);
    model.decode(cores, coreflow::MatrixBatchMut::column_major(back.data(), rows, cols, count), ws);

    double err = 0, norm = 0;
    for (std::size_t k = 0; k < x.size(); k++) {
        err += (back[k] - x[k]) * (back[k] - x[k]);
        norm += x[k] * x[k];
    }
    double rel = std::sqrt(err / norm);
    std::printf("round trip of %zu matrices (workspace %zu bytes): relative error %.2e\n", count,
                ws.size(), rel);
    if (!(rel < 1e-2)) {
        std::fprintf(stderr, "round trip outside tolerance\n");
        return 1;
    }

    // Errors arrive as exceptions with the status and the library's message.
    try {
        coreflow::FitOptions bad = opts;
        bad.rank_rows = static_cast<uint32_t>(rows + 1);
        coreflow::Model::fit(train, bad);
        std::fprintf(stderr, "an impossible rank was accepted\n");
        return 1;
    } catch (const coreflow::Error& e) {
        std::printf("expected error (status %d): %s\n", e.status(), e.what());
        if (e.status() != COREFLOW_ERR_INVALID_ARGUMENT) return 1;
    }
    return 0;
}

}  // namespace

int main() {
    try {
        int failed = run();
        std::puts(failed ? "FAILED" : "ok");
        return failed;
    } catch (const coreflow::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
