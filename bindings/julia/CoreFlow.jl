"""
    CoreFlow

A thin `ccall` wrapper over the CoreFlow C API (`include/coreflow.h`).
Matrices are column-major `Array{Float64,3}` of size `(m, n, N)` (any
`StridedArray` works): their strides `(1, m, m*n)` go to the library as
they are, so nothing is copied.

    include("CoreFlow.jl"); using .CoreFlow
    x = randn(32, 24, 100)                        # 100 matrices of 32 x 24
    model = CoreFlow.fit(x; rank_rows = 4, rank_cols = 4, center = true)
    ws = CoreFlow.Workspace(model, 100)           # sized once, reused
    cores = CoreFlow.encode(model, x, ws)         # (4, 4, 100)
    back = CoreFlow.decode(model, cores, ws)      # (32, 24, 100)

The library is opened on first use from `ENV["COREFLOW_LIB"]`, else
`target/release` of the source tree this file sits in, else the system
search path (`libcoreflow.so.0`). Failed calls throw `CoreFlowError` with
the status, its name and the library's message.
"""
module CoreFlow

using Libdl

export CoreFlowError, Model, Workspace, fit, encode, encode!, decode, decode!, info, subspaces

const ABI_VERSION = 1

# Status codes (fixed values, never reused) and workspace operations.
const OK = Int32(0)
const ERR_NULL = Int32(1)
const ERR_INVALID_ARGUMENT = Int32(2)
const ERR_SHAPE = Int32(3)
const ERR_NON_FINITE = Int32(4)
const ERR_WORKSPACE = Int32(5)
const ERR_VERSION = Int32(8)
const ERR_CANCELLED = Int32(9)
const ERR_UNSUPPORTED = Int32(11)
const ERR_INTERNAL = Int32(99)
const OP_SAMPLE = Int32(0)
const OP_ENCODE = Int32(1)
const OP_DECODE = Int32(2)
const OP_LOG_PROB = Int32(3)
const OP_COMPLETE = Int32(4)

# Struct mirrors of include/coreflow.h, field for field (isbits structs get
# the C layout). bindings/python/test_coreflow.py checks them against the
# header.

struct Matrices
    data::Ptr{Float64}
    mask::Ptr{UInt8}
    count::Csize_t
    rows::Csize_t
    cols::Csize_t
    sample_stride::Cptrdiff_t
    row_stride::Cptrdiff_t
    col_stride::Cptrdiff_t
end

struct MatricesMut
    data::Ptr{Float64}
    count::Csize_t
    rows::Csize_t
    cols::Csize_t
    sample_stride::Cptrdiff_t
    row_stride::Cptrdiff_t
    col_stride::Cptrdiff_t
end

struct Progress
    struct_size::Csize_t
    stage::Int32
    iteration::UInt64
    total::UInt64
    loss::Float64
end

struct FitOptions
    struct_size::Csize_t
    rank_rows::UInt32
    rank_cols::UInt32
    energy::Float64
    center::UInt8
    nan_is_missing::UInt8
    subspace_method::Int32
    subspace_max_iter::UInt32
    subspace_tol::Float64
    completion_max_iter::UInt32
    completion_tol::Float64
    ridge::Float64
    flow_hidden::UInt32
    flow_layers::UInt32
    flow_time_freqs::UInt32
    flow_energy::Float64
    flow_max_dim::UInt32
    flow_steps::UInt32
    batch_size::UInt32
    learning_rate::Float64
    weight_decay::Float64
    ema_decay::Float64
    coupling::Int32
    seed::UInt64
    threads::UInt32
    progress::Ptr{Cvoid}
    progress_user::Ptr{Cvoid}
    core_model::Int32
    holdout_fraction::Float64
    allreduce::Ptr{Cvoid}
    allreduce_user::Ptr{Cvoid}
end

struct SampleOptions
    struct_size::Csize_t
    solver::Int32
    steps::UInt32
    rtol::Float64
    atol::Float64
end

struct ModelInfo
    struct_size::Csize_t
    rows::Csize_t
    cols::Csize_t
    rank_rows::Csize_t
    rank_cols::Csize_t
    core_dim::Csize_t
    flow_dim::Csize_t
    centered::UInt8
    has_flow::UInt8
    flow_hidden::UInt32
    flow_layers::UInt32
    train_count::Csize_t
    explained_energy::Float64
    final_loss::Float64
    subspace_iterations::UInt32
    subspace_converged::UInt8
    subspace_objective::Float64
    masked::UInt8
    completion_iterations::UInt32
    completion_converged::UInt8
    completion_objective::Float64
    noise_variance::Float64
    core_model::Int32
    flow_block::Csize_t
    heldout_loglik_flow::Float64
    heldout_loglik_gaussian::Float64
end

# ---------------------------------------------------------------------------
# The library, opened on first use; functions are looked up by name.

const _lib = Ref{Ptr{Cvoid}}(C_NULL)

function _default_path()
    tree = joinpath(@__DIR__, "..", "..", "target", "release", "libcoreflow." * Libdl.dlext)
    isfile(tree) && return tree
    return Sys.islinux() ? "libcoreflow.so.0" : "libcoreflow"
end

function _handle()
    if _lib[] == C_NULL
        lib = Libdl.dlopen(get(ENV, "COREFLOW_LIB", _default_path()))
        abi = ccall(Libdl.dlsym(lib, :coreflow_abi_version), UInt32, ())
        abi == ABI_VERSION || error("libcoreflow has ABI $abi, this module speaks ABI $ABI_VERSION")
        _lib[] = lib
    end
    return _lib[]
end

_sym(name::Symbol) = Libdl.dlsym(_handle(), name)

struct CoreFlowError <: Exception
    status::Int32
    name::String
    message::String
end

Base.showerror(io::IO, e::CoreFlowError) = print(io, e.name, ": ", e.message)

function _check(status::Int32)
    status == OK && return nothing
    # The message first: it is only valid until the next call.
    message = unsafe_string(ccall(_sym(:coreflow_last_error_message), Cstring, ()))
    name = unsafe_string(ccall(_sym(:coreflow_status_name), Cstring, (Int32,), status))
    throw(CoreFlowError(status, name, message))
end

# ---------------------------------------------------------------------------
# Views: the array's own strides, in elements; (m, n, N) means sample stride
# strides[3], row stride strides[1], column stride strides[2].

function _view(x::StridedArray{Float64,3})
    m, n, N = size(x)
    s = strides(x)
    return Matrices(pointer(x), C_NULL, N, m, n, s[3], s[1], s[2])
end

function _view_mut(x::StridedArray{Float64,3})
    m, n, N = size(x)
    s = strides(x)
    return MatricesMut(pointer(x), N, m, n, s[3], s[1], s[2])
end

# ---------------------------------------------------------------------------
# Options

"""
    fit_options(; kw...)

The library's defaults with the named fields replaced, e.g.
`fit_options(rank_rows = 4, center = true)`.
"""
function fit_options(; kw...)
    # The library writes its own sizeof(coreflow_fit_options), which a newer
    # library may have grown: give it room, then keep the fields known here.
    buf = zeros(UInt8, sizeof(FitOptions) + 1024)
    opts = GC.@preserve buf begin
        ccall(_sym(:coreflow_fit_options_init), Cvoid, (Ptr{Cvoid},), buf)
        unsafe_load(Ptr{FitOptions}(pointer(buf)))
    end
    names = fieldnames(FitOptions)
    values = Any[getfield(opts, f) for f in names]
    values[1] = Csize_t(sizeof(FitOptions))
    for (k, v) in kw
        i = findfirst(==(k), names)
        if i === nothing || k in (:struct_size, :progress, :progress_user)
            throw(ArgumentError("fit_options: unknown option $k"))
        end
        values[i] = convert(fieldtype(FitOptions, i), v)
    end
    return FitOptions(values...)
end

# ---------------------------------------------------------------------------
# Model

"""
    Model

A fitted model. Owns its handle: `close(model)` or the garbage collector
(a finalizer) calls `coreflow_model_free`. Immutable, so tasks may share it,
each with its own `Workspace`.
"""
mutable struct Model
    handle::Ptr{Cvoid}
    function Model(handle::Ptr{Cvoid})
        model = new(handle)
        finalizer(close, model)
        return model
    end
end

function Base.close(model::Model)
    if model.handle != C_NULL
        ccall(_sym(:coreflow_model_free), Cvoid, (Ptr{Cvoid},), model.handle)
        model.handle = C_NULL
    end
    return nothing
end

# Passing a Model to ccall passes its handle and keeps the Model (and so the
# handle, which its finalizer frees) alive for the call.
Base.cconvert(::Type{Ptr{Cvoid}}, model::Model) = model
function Base.unsafe_convert(::Type{Ptr{Cvoid}}, model::Model)
    model.handle == C_NULL && throw(ArgumentError("model is closed"))
    return model.handle
end

"""
    fit(x; kw...) -> Model

Fits a model to the matrices `x[:, :, j]` (no copy). Keywords are fields
of `coreflow_fit_options` (`rank_rows`, `rank_cols`, `energy`, `center`,
`threads`, `seed`, ...).
"""
function fit(x::StridedArray{Float64,3}; kw...)
    opts = Ref(fit_options(; kw...))
    handle = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve x begin
        view = Ref(_view(x))
        _check(ccall(_sym(:coreflow_fit), Int32,
                     (Ptr{Matrices}, Ptr{FitOptions}, Ptr{Ptr{Cvoid}}), view, opts, handle))
    end
    return Model(handle[])
end

"""
    info(model) -> ModelInfo
"""
function info(model::Model)
    zero_info = ntuple(i -> i == 1 ? Csize_t(sizeof(ModelInfo)) : zero(fieldtype(ModelInfo, i)),
                       fieldcount(ModelInfo))
    out = Ref(ModelInfo(zero_info...))
    _check(ccall(_sym(:coreflow_model_get_info), Int32, (Ptr{Cvoid}, Ptr{ModelInfo}), model, out))
    return out[]
end

"""
    subspaces(model) -> (U, V)

The row basis U (m x r) and column basis V (n x s).
"""
function subspaces(model::Model)
    i = info(model)
    u = Matrix{Float64}(undef, i.rows, i.rank_rows)
    v = Matrix{Float64}(undef, i.cols, i.rank_cols)
    _check(ccall(_sym(:coreflow_model_subspaces), Int32,
                 (Ptr{Cvoid}, Ptr{Float64}, Ptr{Float64}), model, u, v))
    return u, v
end

"""
    Workspace(model, count, ops = (OP_ENCODE, OP_DECODE))

Scratch memory for up to `count` matrices of each of `ops`. Reuse it: calls
that receive it never allocate.
"""
struct Workspace
    buf::Vector{UInt8}
end

function Workspace(model::Model, count::Integer, ops = (OP_ENCODE, OP_DECODE))
    bytes = 0
    for op in ops
        b = Ref{Csize_t}(0)
        _check(ccall(_sym(:coreflow_workspace_size), Int32,
                     (Ptr{Cvoid}, Int32, Csize_t, Ptr{Cvoid}, Ptr{Csize_t}),
                     model, op, count, C_NULL, b))
        bytes = max(bytes, Int(b[]))
    end
    return Workspace(Vector{UInt8}(undef, bytes))
end

"""
    encode!(cores, model, x, ws) -> cores

Writes the core of `x[:, :, j]` into `cores[:, :, j]` (`cores` is an
`Array{Float64,3}` of size (r, s, N)).
"""
function encode!(cores::Array{Float64,3}, model::Model, x::StridedArray{Float64,3}, ws::Workspace)
    i = info(model)
    size(cores) == (i.rank_rows, i.rank_cols, size(x, 3)) ||
        throw(DimensionMismatch("cores: size $((i.rank_rows, i.rank_cols, size(x, 3))) expected"))
    GC.@preserve x begin
        view = Ref(_view(x))
        _check(ccall(_sym(:coreflow_encode), Int32,
                     (Ptr{Cvoid}, Ptr{Matrices}, Ptr{Float64}, Ptr{UInt8}, Csize_t),
                     model, view, cores, ws.buf, length(ws.buf)))
    end
    return cores
end

function encode(model::Model, x::StridedArray{Float64,3}, ws::Workspace = Workspace(model, size(x, 3)))
    i = info(model)
    return encode!(Array{Float64,3}(undef, i.rank_rows, i.rank_cols, size(x, 3)), model, x, ws)
end

"""
    decode!(out, model, cores, ws) -> out

Writes the matrix decoded from `cores[:, :, j]` into `out[:, :, j]`.
"""
function decode!(out::StridedArray{Float64,3}, model::Model, cores::Array{Float64,3}, ws::Workspace)
    i = info(model)
    size(cores) == (i.rank_rows, i.rank_cols, size(out, 3)) ||
        throw(DimensionMismatch("cores: size $((i.rank_rows, i.rank_cols, size(out, 3))) expected"))
    GC.@preserve out begin
        view = Ref(_view_mut(out))
        _check(ccall(_sym(:coreflow_decode), Int32,
                     (Ptr{Cvoid}, Ptr{Float64}, Ptr{MatricesMut}, Ptr{UInt8}, Csize_t),
                     model, cores, view, ws.buf, length(ws.buf)))
    end
    return out
end

function decode(model::Model, cores::Array{Float64,3}, ws::Workspace = Workspace(model, size(cores, 3)))
    i = info(model)
    return decode!(Array{Float64,3}(undef, i.rows, i.cols, size(cores, 3)), model, cores, ws)
end

end # module
