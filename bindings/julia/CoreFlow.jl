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

    flow = CoreFlow.fit(x; rank_rows = 4, rank_cols = 4, flow_steps = 400,
                        flow_hidden = 64, flow_layers = 2)
    new = CoreFlow.sample(flow, 10; seed = 1)     # (32, 24, 10)
    lp, dist = CoreFlow.log_prob(flow, new; residual = true)
    filled = CoreFlow.complete(flow, x_with_nans) # NaN = missing (or mask = ...)
    CoreFlow.save(flow, "fields.cfm"); same = CoreFlow.load("fields.cfm")

The library is opened on first use from `ENV["COREFLOW_LIB"]`, else
`target/release` of the source tree this file sits in, else the system
search path (`libcoreflow.so.0`). Failed calls throw `CoreFlowError` with
the status, its name and the library's message.
"""
module CoreFlow

using Libdl

# sample, save and load are not exported: StatsBase and FileIO use those
# names. Call them as CoreFlow.sample, CoreFlow.save, CoreFlow.load.
export CoreFlowError, Model, Workspace, fit, encode, encode!, decode, decode!, info, subspaces,
       sample!, log_prob, log_prob!, complete, complete!, impute, impute!, to_bytes, from_bytes, metrics

const ABI_VERSION = 1

# Status codes (fixed values, never reused) and workspace operations.
const OK = Int32(0)
const ERR_NULL = Int32(1)
const ERR_INVALID_ARGUMENT = Int32(2)
const ERR_SHAPE = Int32(3)
const ERR_NON_FINITE = Int32(4)
const ERR_WORKSPACE = Int32(5)
const ERR_IO = Int32(6)
const ERR_FORMAT = Int32(7)
const ERR_VERSION = Int32(8)
const ERR_CANCELLED = Int32(9)
const ERR_NUMERICAL = Int32(10)
const ERR_UNSUPPORTED = Int32(11)
const ERR_COMMUNICATION = Int32(12)
const ERR_OUT_OF_MEMORY = Int32(13)
const ERR_INTERNAL = Int32(99)
# Caps on sizes and options (COREFLOW_MAX_*): larger values are refused.
const MAX_THREADS = 256
const MAX_ITERATIONS = 1000000
const MAX_FLOW_STEPS = 100000000
const MAX_FLOW_HIDDEN = 16384
const MAX_FLOW_LAYERS = 64
const MAX_FLOW_TIME_FREQS = 4096
const MAX_SOLVER_STEPS = 1000000
const OP_SAMPLE = Int32(0)
const OP_ENCODE = Int32(1)
const OP_DECODE = Int32(2)
const OP_LOG_PROB = Int32(3)
const OP_COMPLETE = Int32(4)
const OP_IMPUTE = Int32(5)
const SUBSPACE_METHOD_HOOI = Int32(0)
const SUBSPACE_METHOD_RIEMANNIAN = Int32(1)
const COUPLING_INDEPENDENT = Int32(0)
const COUPLING_MINIBATCH_OT = Int32(1)
const STAGE_SUBSPACE = Int32(0)
const STAGE_COMPLETION = Int32(1)
const STAGE_FLOW = Int32(2)
const SOLVER_EULER = Int32(0)
const SOLVER_HEUN = Int32(1)
const SOLVER_RK4 = Int32(2)
const SOLVER_DOPRI5 = Int32(3)
const CORE_MODEL_NONE = Int32(-1)   # in ModelInfo: geometry only
const CORE_MODEL_AUTO = Int32(0)
const CORE_MODEL_FLOW = Int32(1)
const CORE_MODEL_GAUSSIAN = Int32(2)
const CORE_MODEL_MIXTURE = Int32(3)
const IMPUTE_LEVEL_FITTED = UInt32(0)
const IMPUTE_LEVEL_OBSERVED = UInt32(1)

# Struct mirrors of include/coreflow.h, field for field (isbits structs get
# the C layout). bindings/python/tests/test_coreflow.py checks them against the
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
    flow_noise_gap::Float64
end

struct SampleOptions
    struct_size::Csize_t
    solver::Int32
    steps::UInt32
    rtol::Float64
    atol::Float64
    impute_level::UInt32
end

struct MetricsOptions
    struct_size::Csize_t
    threads::UInt32
    top_k::UInt32
end

struct MetricsResult
    struct_size::Csize_t
    sve::Float64
    topk_w1::Float64
    mmd2::Float64
    mean_error::Float64
    rowcov_error::Float64
    colcov_error::Float64
    nn_accuracy::Float64
    dcr_ratio::Float64
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
    heldout_mmd_gaussian::Float64
    heldout_mmd_flow::Float64
    heldout_loglik_mixture::Float64
    heldout_mmd_mixture::Float64
    mixture_block::Csize_t
    mixture_components::Csize_t
    flow_train_steps::Csize_t
    noise_dof::Float64
    noise_tail_scale::Float64
    noise_profile_spread::Float64
    noise_bound::Float64
    data_min::Float64
    data_max::Float64
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

# The library's defaults for a `T`, from its `init` function. The sized init
# (`init`_sized) writes at most sizeof(T) and records how much it wrote. A
# library without it writes its own sizeof, which a newer library may have
# grown: give it room, then keep the fields known here.
function _init_struct(::Type{T}, init::Symbol) where {T}
    sized = Libdl.dlsym(_handle(), Symbol(init, :_sized); throw_error = false)
    buf = zeros(UInt8, sizeof(T) + 1024)  # zeros: fields an older library lacks
    GC.@preserve buf begin
        if sized !== nothing
            ccall(sized, Cvoid, (Ptr{Cvoid}, Csize_t), buf, sizeof(T))
        else
            ccall(_sym(init), Cvoid, (Ptr{Cvoid},), buf)
        end
        return unsafe_load(Ptr{T}(pointer(buf)))
    end
end

# `opts` with the named fields replaced (struct_size: what the init recorded,
# at most the size known here).
function _with_fields(opts::T, kw, hidden, what) where {T}
    names = fieldnames(T)
    values = Any[getfield(opts, f) for f in names]
    values[1] = min(Csize_t(sizeof(T)), opts.struct_size)
    for (k, v) in kw
        i = findfirst(==(k), names)
        if i === nothing || k === :struct_size || k in hidden
            throw(ArgumentError("$what: unknown option $k"))
        end
        values[i] = convert(fieldtype(T, i), v)
    end
    return T(values...)
end

"""
    fit_options(; kw...)

The library's defaults with the named fields replaced, e.g.
`fit_options(rank_rows = 4, center = true)`.
"""
fit_options(; kw...) = _with_fields(_init_struct(FitOptions, :coreflow_fit_options_init), kw,
                                    (:progress, :progress_user, :allreduce, :allreduce_user),
                                    "fit_options")

"""
    sample_options(; kw...)

Solver settings of sampling and scoring: the defaults (RK4, 16 steps) with
the named fields replaced, e.g. `sample_options(solver = SOLVER_DOPRI5)`.
"""
sample_options(; kw...) = _with_fields(_init_struct(SampleOptions, :coreflow_sample_options_init),
                                       kw, (), "sample_options")

# The options argument of a call: NULL (library defaults) or the struct.
_options_arg(::Nothing) = C_NULL
_options_arg(o::SampleOptions) = Ref(o)

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
    Workspace(model, count, ops = (OP_ENCODE, OP_DECODE); options = nothing)

Scratch memory for up to `count` matrices of each of `ops` (e.g.
`(OP_SAMPLE, OP_LOG_PROB)`); `options`: the `sample_options` of later
sample and log_prob calls (nothing = defaults). Reuse it, one per task:
calls that receive it never allocate.
"""
struct Workspace
    buf::Vector{UInt8}
end

function Workspace(model::Model, count::Integer, ops = (OP_ENCODE, OP_DECODE);
                   options::Union{Nothing,SampleOptions} = nothing)
    bytes = 0
    opts = _options_arg(options)
    for op in ops
        b = Ref{Csize_t}(0)
        _check(ccall(_sym(:coreflow_workspace_size), Int32,
                     (Ptr{Cvoid}, Int32, Csize_t, Ptr{Cvoid}, Ptr{Csize_t}),
                     model, op, count, opts, b))
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

# ---------------------------------------------------------------------------
# Sampling, scoring, completion

"""
    sample!(out, model, ws = nothing; seed = 0, first_index = 0, options = nothing) -> out

Draws `size(out, 3)` new matrices into `out[:, :, j]`: matrix j is sample
number `first_index + j - 1` of stream `seed`, so batches drawn in pieces or
on several tasks are bitwise the same. `options`: `sample_options(...)`
(nothing = RK4, 16 steps). `ws`: a `Workspace` with `OP_SAMPLE` sized for
the same options (nothing = one for this call).
"""
function sample!(out::StridedArray{Float64,3}, model::Model,
                 ws::Union{Nothing,Workspace} = nothing;
                 seed::Integer = 0, first_index::Integer = 0,
                 options::Union{Nothing,SampleOptions} = nothing)
    if ws === nothing
        ws = Workspace(model, size(out, 3), (OP_SAMPLE,); options = options)
    end
    GC.@preserve out begin
        view = Ref(_view_mut(out))
        _check(ccall(_sym(:coreflow_sample), Int32,
                     (Ptr{Cvoid}, Ptr{Cvoid}, UInt64, UInt64, Ptr{MatricesMut}, Ptr{UInt8}, Csize_t),
                     model, _options_arg(options), seed, first_index, view, ws.buf,
                     length(ws.buf)))
    end
    return out
end

function sample(model::Model, count::Integer, ws::Union{Nothing,Workspace} = nothing; kw...)
    i = info(model)
    return sample!(Array{Float64,3}(undef, i.rows, i.cols, count), model, ws; kw...)
end

"""
    log_prob!(lp, residual, model, x, ws; options = nothing) -> lp

Writes the log-density of `x[:, :, j]` (a density over matrices in the
learned geometry) into `lp[j]` and, unless `residual` is `nothing`, its
relative distance from that geometry into `residual[j]`.
"""
function log_prob!(lp::Vector{Float64}, residual::Union{Nothing,Vector{Float64}}, model::Model,
                   x::StridedArray{Float64,3}, ws::Workspace;
                   options::Union{Nothing,SampleOptions} = nothing)
    n = size(x, 3)
    length(lp) == n || throw(DimensionMismatch("lp: length $n expected"))
    residual === nothing || length(residual) == n ||
        throw(DimensionMismatch("residual: length $n expected"))
    res = residual === nothing ? Ptr{Float64}(C_NULL) : pointer(residual)
    GC.@preserve x lp residual begin
        view = Ref(_view(x))
        _check(ccall(_sym(:coreflow_log_prob), Int32,
                     (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Matrices}, Ptr{Float64}, Ptr{Float64},
                      Ptr{UInt8}, Csize_t),
                     model, _options_arg(options), view, lp, res, ws.buf, length(ws.buf)))
    end
    return lp
end

"""
    log_prob(model, x, ws = nothing; residual = false, options = nothing)

The log-densities of the matrices `x[:, :, j]`, or `(log_prob, residual)`
with `residual = true`.
"""
function log_prob(model::Model, x::StridedArray{Float64,3},
                  ws::Union{Nothing,Workspace} = nothing;
                  residual::Bool = false, options::Union{Nothing,SampleOptions} = nothing)
    if ws === nothing
        ws = Workspace(model, size(x, 3), (OP_LOG_PROB,); options = options)
    end
    lp = Vector{Float64}(undef, size(x, 3))
    res = residual ? Vector{Float64}(undef, size(x, 3)) : nothing
    log_prob!(lp, res, model, x, ws; options = options)
    return residual ? (lp, res) : lp
end

"""
    complete!(out, model, x, ws = ...; mask = nothing) -> out

Writes `x` into `out` with its missing entries completed: where `mask`
(an `Array{UInt8,3}` or `Array{Bool,3}` of the size and layout of `x`) is
zero, or the NaN entries when `mask` is `nothing`. Observed entries are
copied bitwise; `out` must not overlap `x`.
"""
function complete!(out::StridedArray{Float64,3}, model::Model, x::StridedArray{Float64,3},
                   ws::Workspace = Workspace(model, size(x, 3), (OP_COMPLETE,));
                   mask::Union{Nothing,Array{UInt8,3},Array{Bool,3}} = nothing)
    mask === nothing || (size(mask) == size(x) && strides(mask) == strides(x)) ||
        throw(DimensionMismatch("mask: must have the size and layout of x"))
    GC.@preserve out x mask begin
        v = _view(x)
        if mask !== nothing
            v = Matrices(v.data, Ptr{UInt8}(pointer(mask)), v.count, v.rows, v.cols,
                         v.sample_stride, v.row_stride, v.col_stride)
        end
        view = Ref(v)
        oview = Ref(_view_mut(out))
        _check(ccall(_sym(:coreflow_complete), Int32,
                     (Ptr{Cvoid}, Ptr{Matrices}, Ptr{MatricesMut}, Ptr{UInt8}, Csize_t),
                     model, view, oview, ws.buf, length(ws.buf)))
    end
    return out
end

complete(model::Model, x::StridedArray{Float64,3}, args...; kw...) =
    complete!(Array{Float64,3}(undef, size(x)), model, x, args...; kw...)

"""
    impute!(out, model, x, ws = ...; mask = nothing, seed = 0, first_index = 0,
            options = nothing, level = :fitted) -> out

Multiple imputation: `out[:, :, i, k]` receives draw `k` of matrix
`x[:, :, i]` from the model's law given its observed entries (where `mask`,
of the size and layout of `x`, is nonzero, or the non-NaN entries when
`mask` is `nothing`): the core from its posterior under the core model,
then noise of the model's noise law (a variance profile over rows and columns,
Gaussian or Student-t tails, truncated at `noise_bound` standard deviations)
on the missing entries, each censored to the training range
`[data_min, data_max]` (`info(model)`); observed entries are copied bitwise. `out` has size `(m, n, N, ndraws)`. Draw `k` of matrix `i`
is draw number `first_index + (i - 1) * ndraws + k - 1` of stream `seed`
(`coreflow_impute` with a partial of sample stride 0 per matrix). `ws`: a
`Workspace` with `OP_IMPUTE` for `ndraws` matrices and the same options.
`level`: the noise level of the draws, `:fitted` (the model's sigma^2, the
exact posterior under the model) or `:observed` (sigma^2 times a multiplier
re-estimated on each matrix's observed entries, `IMPUTE_LEVEL_OBSERVED`);
`nothing` keeps `options.impute_level`.
"""
function impute!(out::StridedArray{Float64,4}, model::Model, x::StridedArray{Float64,3},
                 ws::Union{Nothing,Workspace} = nothing;
                 mask::Union{Nothing,Array{UInt8,3},Array{Bool,3}} = nothing,
                 seed::Integer = 0, first_index::Integer = 0,
                 options::Union{Nothing,SampleOptions} = nothing,
                 level::Union{Nothing,Symbol} = :fitted)
    if level !== nothing
        code = level === :fitted ? IMPUTE_LEVEL_FITTED :
               level === :observed ? IMPUTE_LEVEL_OBSERVED :
               throw(ArgumentError("level: $level is not one of :fitted, :observed"))
        base = options === nothing ? sample_options() : options
        options = _with_fields(base, (:impute_level => code,), (), "sample_options")
    end
    m, n, N = size(x)
    ndraws = size(out, 4)
    size(out) == (m, n, N, ndraws) ||
        throw(DimensionMismatch("out: size ($m, $n, $N, ndraws) expected, got $(size(out))"))
    mask === nothing || (size(mask) == size(x) && strides(mask) == strides(x)) ||
        throw(DimensionMismatch("mask: must have the size and layout of x"))
    if ws === nothing
        ws = Workspace(model, ndraws, (OP_IMPUTE,); options = options)
    end
    s = strides(x)
    GC.@preserve out x mask begin
        for i in 1:N
            xi = pointer(view(x, :, :, i))
            mi = mask === nothing ? Ptr{UInt8}(C_NULL) : Ptr{UInt8}(pointer(view(mask, :, :, i)))
            # Sample stride 0: the same matrix for every draw.
            v = Ref(Matrices(xi, mi, ndraws, m, n, 0, s[1], s[2]))
            oview = Ref(_view_mut(view(out, :, :, i, :)))
            _check(ccall(_sym(:coreflow_impute), Int32,
                         (Ptr{Cvoid}, Ptr{Cvoid}, UInt64, UInt64, Ptr{Matrices},
                          Ptr{MatricesMut}, Ptr{UInt8}, Csize_t),
                         model, _options_arg(options), seed,
                         first_index + (i - 1) * ndraws, v, oview, ws.buf, length(ws.buf)))
        end
    end
    return out
end

"""
    impute(model, x, ndraws, ws = nothing; kw...) -> Array{Float64,4}

`impute!` into a new `(m, n, N, ndraws)` array; quantiles over the last
axis give intervals for the missing entries.
"""
function impute(model::Model, x::StridedArray{Float64,3}, ndraws::Integer,
                ws::Union{Nothing,Workspace} = nothing; kw...)
    m, n, N = size(x)
    return impute!(Array{Float64,4}(undef, m, n, N, ndraws), model, x, ws; kw...)
end

# ---------------------------------------------------------------------------
# Model files

"""
    save(model, path)

Writes the model file (versioned, checksummed).
"""
function save(model::Model, path::AbstractString)
    _check(ccall(_sym(:coreflow_model_save), Int32, (Ptr{Cvoid}, Cstring), model, path))
    return nothing
end

"""
    load(path) -> Model
"""
function load(path::AbstractString)
    handle = Ref{Ptr{Cvoid}}(C_NULL)
    _check(ccall(_sym(:coreflow_model_load), Int32, (Cstring, Ptr{Ptr{Cvoid}}), path, handle))
    return Model(handle[])
end

"""
    to_bytes(model) -> Vector{UInt8}

The model file image in memory.
"""
function to_bytes(model::Model)
    len = Ref{Csize_t}(0)
    _check(ccall(_sym(:coreflow_model_to_bytes), Int32,
                 (Ptr{Cvoid}, Ptr{UInt8}, Csize_t, Ptr{Csize_t}), model, Ptr{UInt8}(C_NULL), 0, len))
    bytes = Vector{UInt8}(undef, len[])
    _check(ccall(_sym(:coreflow_model_to_bytes), Int32,
                 (Ptr{Cvoid}, Ptr{UInt8}, Csize_t, Ptr{Csize_t}), model, bytes, length(bytes), len))
    return resize!(bytes, len[])
end

"""
    from_bytes(bytes::Vector{UInt8}) -> Model
"""
function from_bytes(bytes::Vector{UInt8})
    handle = Ref{Ptr{Cvoid}}(C_NULL)
    _check(ccall(_sym(:coreflow_model_from_bytes), Int32,
                 (Ptr{UInt8}, Csize_t, Ptr{Ptr{Cvoid}}), bytes, length(bytes), handle))
    return Model(handle[])
end

# ---------------------------------------------------------------------------
# Metrics

"""
    metrics(real, generated; train = nothing, threads = 0, top_k = 10) -> MetricsResult

Scores the generated matrices `generated[:, :, j]` against the real
(held-out) ones with the metrics of the design (section 6): `sve`,
`topk_w1`, `mmd2`, `mean_error`, `rowcov_error`, `colcov_error`, and
`nn_accuracy` (balanced leave-one-out 1-NN two-sample accuracy, 0.5 ideal).
With `train`, the generator's training set, also `dcr_ratio` (median
distance of generated matrices to their closest training matrix over that of
the real ones; below 1 points at copying); without it `dcr_ratio` is NaN.
No array is copied.
"""
function metrics(real::StridedArray{Float64,3}, generated::StridedArray{Float64,3};
                 train::Union{Nothing,StridedArray{Float64,3}} = nothing, kw...)
    opts = Ref(_with_fields(_init_struct(MetricsOptions, :coreflow_metrics_options_init), kw, (),
                            "metrics"))
    empty = ntuple(i -> i == 1 ? Csize_t(sizeof(MetricsResult)) : NaN, fieldcount(MetricsResult))
    out = Ref(MetricsResult(empty...))
    GC.@preserve real generated train begin
        a = Ref(_view(real))
        b = Ref(_view(generated))
        t = train === nothing ? Ptr{Matrices}(C_NULL) : Ref(_view(train))
        _check(ccall(_sym(:coreflow_metrics_with_train), Int32,
                     (Ptr{Matrices}, Ptr{Matrices}, Ptr{Matrices}, Ptr{MetricsOptions},
                      Ptr{MetricsResult}), a, b, t, opts, out))
    end
    return out[]
end

end # module
