// coreflow.hpp: a small header-only C++17 wrapper over the CoreFlow C API.
//
// - coreflow::Model owns a coreflow_model* (move-only, freed on destruction);
// - a failed call throws coreflow::Error carrying the status and the
//   library's message;
// - coreflow::Workspace is a buffer sized by coreflow_workspace_size;
// - coreflow::Span, MatrixBatch and MatrixBatchMut are non-owning views, so
//   data in any layout (C-order, column-major, any strides) passes without
//   copies;
// - models are saved to files or to std::vector<std::uint8_t> images and
//   loaded back (Model::save / load / to_bytes / from_bytes).
// Every call maps to one C function; the C API's rules (README.md, "API
// conventions") apply unchanged.
#ifndef COREFLOW_HPP
#define COREFLOW_HPP

#include "coreflow.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coreflow {

/// A failed CoreFlow call: `status()` is the COREFLOW_ERR_* code, `what()`
/// its name and the library's message.
class Error : public std::runtime_error {
public:
    Error(coreflow_status status, const std::string& message)
        : std::runtime_error(std::string(coreflow_status_name(status)) + ": " + message),
          status_(status) {}
    coreflow_status status() const noexcept { return status_; }

private:
    coreflow_status status_;
};

namespace detail {
inline void check(coreflow_status status) {
    if (status != COREFLOW_OK) {
        // Copy the message first: it is only valid until the next call.
        std::string message = coreflow_last_error_message();
        throw Error(status, message);
    }
}
}  // namespace detail

/// A non-owning view of `size()` contiguous elements (std::span is C++20).
template <class T>
class Span {
public:
    constexpr Span() noexcept = default;
    constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    /// Any contiguous container with data() and size(), e.g. std::vector.
    template <class C, class = std::enable_if_t<std::is_convertible_v<
                           decltype(std::declval<C&>().data()), T*>>>
    constexpr Span(C& c) noexcept : data_(c.data()), size_(c.size()) {}
    /// Span<T> converts to Span<const T>.
    template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
    constexpr Span(Span<U> other) noexcept : data_(other.data()), size_(other.size()) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr T* begin() const noexcept { return data_; }
    constexpr T* end() const noexcept { return data_ + size_; }
    constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

/// A read-only strided batch of matrices (strides in elements).
struct MatrixBatch {
    coreflow_matrices view;

    /// `count` row-major matrices one after the other: NumPy C-order (count, rows, cols).
    static MatrixBatch c_order(const double* data, std::size_t count, std::size_t rows,
                               std::size_t cols) noexcept {
        auto n = static_cast<std::ptrdiff_t>(rows * cols);
        return {{data, nullptr, count, rows, cols, n, static_cast<std::ptrdiff_t>(cols), 1}};
    }
    /// Column-major (rows, cols, count), as in Fortran, Julia or MATLAB.
    static MatrixBatch column_major(const double* data, std::size_t rows, std::size_t cols,
                                    std::size_t count) noexcept {
        auto n = static_cast<std::ptrdiff_t>(rows * cols);
        return {{data, nullptr, count, rows, cols, n, 1, static_cast<std::ptrdiff_t>(rows)}};
    }
    /// The same view with a mask (nonzero = observed), addressed with the
    /// data's strides: a mask array in the same layout as the data.
    MatrixBatch with_mask(const std::uint8_t* mask) const noexcept {
        MatrixBatch masked = *this;
        masked.view.mask = mask;
        return masked;
    }
    std::size_t count() const noexcept { return view.count; }
};

/// A writable strided batch of matrices (strides in elements).
struct MatrixBatchMut {
    coreflow_matrices_mut view;

    static MatrixBatchMut c_order(double* data, std::size_t count, std::size_t rows,
                                  std::size_t cols) noexcept {
        auto n = static_cast<std::ptrdiff_t>(rows * cols);
        return {{data, count, rows, cols, n, static_cast<std::ptrdiff_t>(cols), 1}};
    }
    static MatrixBatchMut column_major(double* data, std::size_t rows, std::size_t cols,
                                       std::size_t count) noexcept {
        auto n = static_cast<std::ptrdiff_t>(rows * cols);
        return {{data, count, rows, cols, n, 1, static_cast<std::ptrdiff_t>(rows)}};
    }
    std::size_t count() const noexcept { return view.count; }
};

/// Fit options, filled with the library's defaults on construction; set the
/// public fields of coreflow_fit_options as needed.
struct FitOptions : coreflow_fit_options {
    FitOptions() noexcept { coreflow_fit_options_init(this); }
};

/// Solver settings of sampling and scoring, filled with the library's
/// defaults (RK4, 16 steps) on construction.
struct SampleOptions : coreflow_sample_options {
    SampleOptions() noexcept { coreflow_sample_options_init(this); }
};

class Model;

/// Scratch memory for inference calls, sized by coreflow_workspace_size.
/// One workspace per thread; reuse it across calls so they never allocate.
class Workspace {
public:
    Workspace() = default;
    /// Large enough for each of `ops` on `model` with at most `count` matrices
    /// (`sample` = NULL: default sample options).
    Workspace(const Model& model, std::initializer_list<coreflow_op> ops, std::size_t count,
              const coreflow_sample_options* sample = nullptr);

    void* data() noexcept { return bytes_.get(); }
    std::size_t size() const noexcept { return size_; }

private:
    std::unique_ptr<unsigned char[]> bytes_;
    std::size_t size_ = 0;
};

/// A fitted model: owns its handle, like std::unique_ptr.
class Model {
public:
    /// Fits a model to `train`.
    static Model fit(const MatrixBatch& train, const FitOptions& opts = FitOptions()) {
        coreflow_model* raw = nullptr;
        detail::check(coreflow_fit(&train.view, &opts, &raw));
        return Model(raw);
    }

    /// Takes ownership of a handle from the C API (NULL gives an empty model).
    explicit Model(coreflow_model* owned) noexcept : handle_(owned) {}

    coreflow_model* get() const noexcept { return handle_.get(); }
    /// Gives up ownership: the caller frees the handle with coreflow_model_free.
    coreflow_model* release() noexcept { return handle_.release(); }
    explicit operator bool() const noexcept { return handle_ != nullptr; }

    coreflow_model_info info() const {
        coreflow_model_info info{};
        info.struct_size = sizeof info;
        detail::check(coreflow_model_get_info(get(), &info));
        return info;
    }

    /// Copies U (rows x rank_rows) and V (cols x rank_cols), column-major.
    void subspaces(Span<double> u, Span<double> v) const {
        auto i = info();
        require(u.size() >= i.rows * i.rank_rows, "u: too small for rows x rank_rows");
        require(v.size() >= i.cols * i.rank_cols, "v: too small for cols x rank_cols");
        detail::check(coreflow_model_subspaces(get(), u.data(), v.data()));
    }

    /// Writes the cores of `in` (count blocks of core_dim values) into `cores`.
    void encode(const MatrixBatch& in, Span<double> cores, Workspace& ws) const {
        require(cores.size() >= in.count() * info().core_dim, "cores: too small for count x core_dim");
        detail::check(coreflow_encode(get(), &in.view, cores.data(), ws.data(), ws.size()));
    }

    /// Writes the matrices decoded from `cores` into `out`.
    void decode(Span<const double> cores, const MatrixBatchMut& out, Workspace& ws) const {
        require(cores.size() >= out.count() * info().core_dim, "cores: too small for count x core_dim");
        coreflow_matrices_mut view = out.view;
        detail::check(coreflow_decode(get(), cores.data(), &view, ws.data(), ws.size()));
    }

    /// Draws `out.count()` new matrices into `out`: matrix j is sample number
    /// `first_index + j` of stream `seed`, so batches drawn in pieces or on
    /// several threads are bitwise the same. `opts` NULL: RK4, 16 steps.
    void sample(const MatrixBatchMut& out, Workspace& ws, std::uint64_t seed,
                std::uint64_t first_index = 0, const SampleOptions* opts = nullptr) const {
        coreflow_matrices_mut view = out.view;
        detail::check(coreflow_sample(get(), opts, seed, first_index, &view, ws.data(), ws.size()));
    }

    /// Writes the log-density of each matrix of `in` into `log_prob` and,
    /// unless `residual` is empty, its relative distance from the learned
    /// geometry into `residual`.
    void log_prob(const MatrixBatch& in, Span<double> log_prob, Span<double> residual,
                  Workspace& ws, const SampleOptions* opts = nullptr) const {
        require(log_prob.size() >= in.count(), "log_prob: fewer entries than matrices");
        require(residual.size() == 0 || residual.size() >= in.count(),
                "residual: fewer entries than matrices");
        detail::check(coreflow_log_prob(get(), opts, &in.view, log_prob.data(),
                                        residual.size() ? residual.data() : nullptr, ws.data(),
                                        ws.size()));
    }

    /// Writes each matrix of `partial` into `out` with its missing entries
    /// (mask zero, or NaN without a mask) completed; observed entries are
    /// copied bitwise. `out` must not overlap `partial`.
    void complete(const MatrixBatch& partial, const MatrixBatchMut& out, Workspace& ws) const {
        coreflow_matrices_mut view = out.view;
        detail::check(coreflow_complete(get(), &partial.view, &view, ws.data(), ws.size()));
    }

    /// Writes the model file (versioned, checksummed).
    void save(const std::string& path) const {
        detail::check(coreflow_model_save(get(), path.c_str()));
    }

    /// Reads a model file.
    static Model load(const std::string& path) {
        coreflow_model* raw = nullptr;
        detail::check(coreflow_model_load(path.c_str(), &raw));
        return Model(raw);
    }

    /// The model file image in memory.
    std::vector<std::uint8_t> to_bytes() const {
        std::size_t len = 0;
        detail::check(coreflow_model_to_bytes(get(), nullptr, 0, &len));
        std::vector<std::uint8_t> bytes(len);
        detail::check(coreflow_model_to_bytes(get(), bytes.data(), bytes.size(), &len));
        bytes.resize(len);
        return bytes;
    }

    /// Reads a model from a file image (as written by to_bytes or save).
    static Model from_bytes(Span<const std::uint8_t> bytes) {
        coreflow_model* raw = nullptr;
        detail::check(coreflow_model_from_bytes(bytes.data(), bytes.size(), &raw));
        return Model(raw);
    }
    static Model from_bytes(const std::vector<std::uint8_t>& bytes) {
        return from_bytes(Span<const std::uint8_t>(bytes.data(), bytes.size()));
    }

private:
    struct Free {
        void operator()(coreflow_model* m) const noexcept { coreflow_model_free(m); }
    };
    // Size checks the C API cannot make (it receives bare pointers).
    static void require(bool ok, const char* message) {
        if (!ok) throw Error(COREFLOW_ERR_SHAPE, message);
    }
    std::unique_ptr<coreflow_model, Free> handle_;
};

inline Workspace::Workspace(const Model& model, std::initializer_list<coreflow_op> ops,
                            std::size_t count, const coreflow_sample_options* sample) {
    for (coreflow_op op : ops) {
        std::size_t bytes = 0;
        detail::check(coreflow_workspace_size(model.get(), op, count, sample, &bytes));
        size_ = std::max(size_, bytes);
    }
    bytes_.reset(new unsigned char[size_ > 0 ? size_ : 1]);
}

}  // namespace coreflow

#endif  // COREFLOW_HPP
