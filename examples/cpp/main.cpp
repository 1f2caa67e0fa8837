// CoreFlow from C++17 through coreflow.hpp: fit a model with a small flow on
// column-major data (as a Fortran, Julia or Eigen host would hold it), check
// an encode/decode round trip, draw and score samples, keep the model as a
// byte image and as a file and load it back, complete a partly observed
// matrix, and show how a failed call reports itself.
//
// usage: coreflow_example_cpp [model file]
//   (default: coreflow_example_cpp.cfm in the working directory, removed at
//   the end)
#include "coreflow.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

const std::size_t rows = 28, cols = 20, count = 64;

// `n` smooth rows x cols fields (a few separable waves with random
// amplitudes plus a little noise), column-major (rows, cols, n).
std::vector<double> make_fields(std::size_t n, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> amp(-1.0, 1.0), noise(-5e-4, 5e-4);
    std::vector<double> x(rows * cols * n);
    const double pi = 3.141592653589793;
    for (std::size_t i = 0; i < n; i++) {
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

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    double err = 0, norm = 0;
    for (std::size_t k = 0; k < want.size(); k++) {
        err += (got[k] - want[k]) * (got[k] - want[k]);
        norm += want[k] * want[k];
    }
    return std::sqrt(err / norm);
}

bool fail(const char* why) {
    std::fprintf(stderr, "%s\n", why);
    return false;
}

// Encode and decode the training set with one workspace sized for both.
bool round_trip(const coreflow::Model& model, const std::vector<double>& x) {
    auto train = coreflow::MatrixBatch::column_major(x.data(), rows, cols, count);
    coreflow::Workspace ws(model, {COREFLOW_OP_ENCODE, COREFLOW_OP_DECODE}, count);
    std::vector<double> cores(count * model.info().core_dim);
    std::vector<double> back(x.size());
    model.encode(train, cores, ws);
    model.decode(cores, coreflow::MatrixBatchMut::column_major(back.data(), rows, cols, count), ws);
    double rel = relative_error(back, x);
    std::printf("round trip of %zu matrices (workspace %zu bytes): relative error %.2e\n", count,
                ws.size(), rel);
    return rel < 1e-2 || fail("round trip outside tolerance");
}

// Draw samples, score them, and check that a copy of the model made through
// a byte image and one made through a file sample bitwise the same.
bool sample_score_persist(const coreflow::Model& model, const std::string& path) {
    const std::size_t n = 6;
    coreflow::SampleOptions so; // RK4, 16 steps
    coreflow::Workspace ws(model, {COREFLOW_OP_SAMPLE, COREFLOW_OP_LOG_PROB}, n, &so);
    std::vector<double> gen(rows * cols * n);
    auto out = coreflow::MatrixBatchMut::column_major(gen.data(), rows, cols, n);
    model.sample(out, ws, /*seed=*/5, /*first_index=*/0, &so);

    std::vector<double> lp(n), residual(n);
    model.log_prob(coreflow::MatrixBatch::column_major(gen.data(), rows, cols, n), lp, residual,
                   ws, &so);
    double worst = 0;
    for (std::size_t j = 0; j < n; j++) {
        if (!std::isfinite(lp[j])) return fail("a sample has a non-finite log-density");
        worst = std::fmax(worst, residual[j]);
    }
    std::printf("sampled %zu matrices: log-densities %.2f .. %.2f, distance from the geometry "
                "%.1e\n", n, lp[0], lp[n - 1], worst);
    if (!(worst < 1e-10)) return fail("samples lie outside the learned geometry");

    std::vector<std::uint8_t> image = model.to_bytes();
    coreflow::Model copy = coreflow::Model::from_bytes(image);
    model.save(path);
    coreflow::Model loaded = coreflow::Model::load(path);
    std::remove(path.c_str());
    std::vector<double> again(gen.size());
    auto out_again = coreflow::MatrixBatchMut::column_major(again.data(), rows, cols, n);
    for (const coreflow::Model* m : {&copy, &loaded}) {
        m->sample(out_again, ws, 5, 0, &so);
        if (std::memcmp(again.data(), gen.data(), gen.size() * sizeof(double)) != 0)
            return fail("a reloaded model samples differently");
    }
    std::printf("model image of %zu bytes; from_bytes and load(\"%s\") sample bitwise equal\n",
                image.size(), path.c_str());
    return true;
}

// Complete a new matrix of which every third entry is missing.
bool complete(const coreflow::Model& model, std::mt19937_64& rng) {
    std::vector<double> truth = make_fields(1, rng);
    std::vector<std::uint8_t> mask(truth.size());
    for (std::size_t k = 0; k < mask.size(); k++) mask[k] = k % 3 != 0;
    std::vector<double> filled(truth.size());
    coreflow::Workspace ws(model, {COREFLOW_OP_COMPLETE}, 1);
    auto partial = coreflow::MatrixBatch::column_major(truth.data(), rows, cols, 1)
                       .with_mask(mask.data());
    model.complete(partial, coreflow::MatrixBatchMut::column_major(filled.data(), rows, cols, 1),
                   ws);
    for (std::size_t k = 0; k < mask.size(); k++)
        if (mask[k] && filled[k] != truth[k]) return fail("an observed entry changed");
    double rel = relative_error(filled, truth);
    std::printf("completed a matrix with a third of its entries missing: relative error %.2e\n",
                rel);
    return rel < 1e-2 || fail("completion error too large");
}

int run(const std::string& path) {
    std::mt19937_64 rng(11);
    std::vector<double> x = make_fields(count, rng);
    auto train = coreflow::MatrixBatch::column_major(x.data(), rows, cols, count);

    coreflow::FitOptions opts;
    opts.rank_rows = 3;
    opts.rank_cols = 3;
    // A small flow, quick even under valgrind (the defaults are sized for
    // real data sets).
    opts.flow_steps = 300;
    opts.flow_hidden = 32;
    opts.flow_layers = 2;
    opts.batch_size = 64;
    coreflow::Model model = coreflow::Model::fit(train, opts);

    coreflow_model_info info = model.info();
    std::printf("model: %zu x %zu, ranks %zu x %zu, explained energy %.6f, core model %s "
                "(flow block %zu of %zu)\n", info.rows, info.cols, info.rank_rows, info.rank_cols,
                info.explained_energy,
                info.core_model == COREFLOW_CORE_MODEL_FLOW ? "flow" : "Gaussian",
                info.flow_block, info.core_dim);

    if (!round_trip(model, x) || !sample_score_persist(model, path) || !complete(model, rng))
        return 1;

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
    try {
        coreflow::Model::load(path + ".missing");
        std::fprintf(stderr, "a missing file was loaded\n");
        return 1;
    } catch (const coreflow::Error& e) {
        std::printf("expected error (status %d): %s\n", e.status(), e.what());
        if (e.status() != COREFLOW_ERR_IO) return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        int failed = run(argc > 1 ? argv[1] : "coreflow_example_cpp.cfm");
        std::puts(failed ? "FAILED" : "ok");
        return failed;
    } catch (const coreflow::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
