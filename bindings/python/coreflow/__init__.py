"""CoreFlow from Python through ctypes.

`CoreFlow` is the scikit-learn style estimator (any array-like input,
string options, pickling); `metrics` compares two sets of matrices:

    est = coreflow.CoreFlow(rank=(4, 4), center=True, flow_steps=400).fit(X)
    new = est.sample(10, random_state=1)
    print(coreflow.metrics(X, new))

The rest of this module is the low-level interface: fit, encode, decode,
sample, score and complete NumPy arrays without copies; save and load models.

    import numpy as np
    import coreflow

    x = np.random.default_rng(0).standard_normal((100, 32, 24))  # (N, m, n)
    model = coreflow.Model.fit(x, rank_rows=4, rank_cols=4, center=True,
                               flow_steps=400, flow_hidden=64, flow_layers=2)
    cores = model.encode(x)      # (N, r, s): cores[j] is the r x s core of x[j]
    back = model.decode(cores)   # (N, m, n)
    new = model.sample(10, seed=1)               # (10, m, n), sample j of stream 1
    lp, dist = model.log_prob(new, residual=True)
    filled = model.complete(x_with_nans)         # NaN = missing (or mask=...)
    model.save("fields.cfm"); same = coreflow.Model.load("fields.cfm")

No array is copied. The C API takes strided views with strides in elements,
so any float64 array whose byte strides are multiples of 8 passes as it is:
C-order or Fortran-order, sliced, transposed. `sample_axis` says which axis
indexes the matrices: 0 for NumPy's (N, m, n), -1 for the (m, n, N) layout
of Julia, Fortran and MATLAB. Outputs can be preallocated (`out=`) and are
then filled in place; a `Workspace` sized once makes every inference call
allocation-free, as in C. The calls release the GIL (ctypes does), so
threads may share one model, each with its own Workspace.

Errors of the library raise `CoreFlowError` with the status code, its name
(e.g. "COREFLOW_ERR_SHAPE") and the library's message. Arrays the views
cannot describe without a copy raise TypeError or ValueError before any call.

The shared library is found by `load()`: its `lib_path` argument, else
$COREFLOW_LIB, else the library installed inside this package (`pip
install`), else target/release of the source tree this package sits in (or
of the working directory), else the system's search path (libcoreflow.so.0,
as installed by CMake).
"""

import ctypes
import os
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_double,
    c_int32,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

import numpy as np

__all__ = [
    "ABI_VERSION",
    "CoreFlow",
    "CoreFlowError",
    "CoreFlowWarning",
    "metrics",
    "Model",
    "Workspace",
    "sample_options",
    "find_library",
    "fit_options",
    "load",
    "matrices_view",
    "matrices_mut_view",
    "version",
]

ABI_VERSION = 1

# Status codes (fixed values, never reused).
OK = 0
ERR_NULL = 1
ERR_INVALID_ARGUMENT = 2
ERR_SHAPE = 3
ERR_NON_FINITE = 4
ERR_WORKSPACE = 5
ERR_IO = 6
ERR_FORMAT = 7
ERR_VERSION = 8
ERR_CANCELLED = 9
ERR_NUMERICAL = 10
ERR_UNSUPPORTED = 11
ERR_COMMUNICATION = 12
ERR_OUT_OF_MEMORY = 13
ERR_INTERNAL = 99

# Caps on sizes and options (COREFLOW_MAX_*): larger values are refused.
MAX_THREADS = 256
MAX_ITERATIONS = 1000000
MAX_FLOW_STEPS = 100000000
MAX_FLOW_HIDDEN = 16384
MAX_FLOW_LAYERS = 64
MAX_FLOW_TIME_FREQS = 4096
MAX_BATCH_SIZE = 1 << 20
MAX_FLOW_PARAMETERS = 1 << 27
MAX_SOLVER_STEPS = 1000000

# Operations that take a workspace.
OP_SAMPLE = 0
OP_ENCODE = 1
OP_DECODE = 2
OP_LOG_PROB = 3
OP_COMPLETE = 4
OP_IMPUTE = 5

SUBSPACE_METHOD_HOOI = 0
SUBSPACE_METHOD_RIEMANNIAN = 1
COUPLING_INDEPENDENT = 0
COUPLING_MINIBATCH_OT = 1
SOLVER_EULER = 0
SOLVER_HEUN = 1
SOLVER_RK4 = 2
SOLVER_DOPRI5 = 3
STAGE_SUBSPACE = 0
STAGE_COMPLETION = 1
STAGE_FLOW = 2
CORE_MODEL_AUTO = 0
CORE_MODEL_FLOW = 1
CORE_MODEL_GAUSSIAN = 2
IMPUTE_LEVEL_FITTED = 0
IMPUTE_LEVEL_OBSERVED = 1

# `level` of impute(): coreflow_sample_options.impute_level by name.
_IMPUTE_LEVELS = {"fitted": IMPUTE_LEVEL_FITTED, "observed": IMPUTE_LEVEL_OBSERVED}


def _impute_options(options, level):
    """`options` (None = defaults) with impute_level set from `level`
    ('fitted' or 'observed'; None keeps the options' own value)."""
    if level is None:
        return options
    if not (isinstance(level, str) and level.lower() in _IMPUTE_LEVELS):
        raise ValueError(f"level: {level!r} is not one of 'fitted', 'observed'")
    if options is None:
        opts = sample_options()
    elif isinstance(options, SampleOptions):
        opts = SampleOptions.from_buffer_copy(options)
    else:
        raise TypeError("options: a SampleOptions (see sample_options()) or None")
    opts.impute_level = _IMPUTE_LEVELS[level.lower()]
    return opts
CORE_MODEL_MIXTURE = 3
CORE_MODEL_NONE = -1  # in model info: geometry only


# ---------------------------------------------------------------------------
# Struct mirrors of include/coreflow.h, field for field (ctypes applies the
# C layout rules). test_coreflow.py checks them against the header.

class Matrices(Structure):
    """coreflow_matrices: a read-only strided batch (strides in elements)."""

    _fields_ = [
        ("data", c_void_p),
        ("mask", c_void_p),
        ("count", c_size_t),
        ("rows", c_size_t),
        ("cols", c_size_t),
        ("sample_stride", c_ssize_t),
        ("row_stride", c_ssize_t),
        ("col_stride", c_ssize_t),
    ]


class MatricesMut(Structure):
    """coreflow_matrices_mut: a writable strided batch (strides in elements)."""

    _fields_ = [
        ("data", c_void_p),
        ("count", c_size_t),
        ("rows", c_size_t),
        ("cols", c_size_t),
        ("sample_stride", c_ssize_t),
        ("row_stride", c_ssize_t),
        ("col_stride", c_ssize_t),
    ]


class Progress(Structure):
    """coreflow_progress, passed to the progress callback."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("stage", c_int32),
        ("iteration", c_uint64),
        ("total", c_uint64),
        ("loss", c_double),
    ]


ProgressFn = CFUNCTYPE(c_int32, c_void_p, POINTER(Progress))
AllreduceFn = CFUNCTYPE(c_int32, c_void_p, POINTER(c_double), c_size_t)


class FitOptions(Structure):
    """coreflow_fit_options; build with fit_options(), which sets the defaults."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("rank_rows", c_uint32),
        ("rank_cols", c_uint32),
        ("energy", c_double),
        ("center", c_uint8),
        ("nan_is_missing", c_uint8),
        ("subspace_method", c_int32),
        ("subspace_max_iter", c_uint32),
        ("subspace_tol", c_double),
        ("completion_max_iter", c_uint32),
        ("completion_tol", c_double),
        ("ridge", c_double),
        ("flow_hidden", c_uint32),
        ("flow_layers", c_uint32),
        ("flow_time_freqs", c_uint32),
        ("flow_energy", c_double),
        ("flow_max_dim", c_uint32),
        ("flow_steps", c_uint32),
        ("batch_size", c_uint32),
        ("learning_rate", c_double),
        ("weight_decay", c_double),
        ("ema_decay", c_double),
        ("coupling", c_int32),
        ("seed", c_uint64),
        ("threads", c_uint32),
        ("progress", ProgressFn),
        ("progress_user", c_void_p),
        ("core_model", c_int32),
        ("holdout_fraction", c_double),
        ("allreduce", AllreduceFn),
        ("allreduce_user", c_void_p),
        ("flow_noise_gap", c_double),
    ]


class SampleOptions(Structure):
    """coreflow_sample_options (solver settings of sampling and scoring; the
    noise level of imputation, impute_level)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("solver", c_int32),
        ("steps", c_uint32),
        ("rtol", c_double),
        ("atol", c_double),
        ("impute_level", c_uint32),
    ]


class MetricsOptions(Structure):
    """coreflow_metrics_options (threads, top_k), for coreflow_metrics."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("threads", c_uint32),
        ("top_k", c_uint32),
    ]


class MetricsResult(Structure):
    """coreflow_metrics_result, filled by coreflow_metrics."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("sve", c_double),
        ("topk_w1", c_double),
        ("mmd2", c_double),
        ("mean_error", c_double),
        ("rowcov_error", c_double),
        ("colcov_error", c_double),
        ("nn_accuracy", c_double),
        ("dcr_ratio", c_double),
    ]


class ModelInfo(Structure):
    """coreflow_model_info, filled by coreflow_model_get_info."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("rows", c_size_t),
        ("cols", c_size_t),
        ("rank_rows", c_size_t),
        ("rank_cols", c_size_t),
        ("core_dim", c_size_t),
        ("flow_dim", c_size_t),
        ("centered", c_uint8),
        ("has_flow", c_uint8),
        ("flow_hidden", c_uint32),
        ("flow_layers", c_uint32),
        ("train_count", c_size_t),
        ("explained_energy", c_double),
        ("final_loss", c_double),
        ("subspace_iterations", c_uint32),
        ("subspace_converged", c_uint8),
        ("subspace_objective", c_double),
        ("masked", c_uint8),
        ("completion_iterations", c_uint32),
        ("completion_converged", c_uint8),
        ("completion_objective", c_double),
        ("noise_variance", c_double),
        ("core_model", c_int32),
        ("flow_block", c_size_t),
        ("heldout_loglik_flow", c_double),
        ("heldout_loglik_gaussian", c_double),
        ("heldout_mmd_gaussian", c_double),
        ("heldout_mmd_flow", c_double),
        ("heldout_loglik_mixture", c_double),
        ("heldout_mmd_mixture", c_double),
        ("mixture_block", c_size_t),
        ("mixture_components", c_size_t),
        ("flow_train_steps", c_size_t),
        ("noise_dof", c_double),
        ("noise_tail_scale", c_double),
        ("noise_profile_spread", c_double),
        ("noise_bound", c_double),
        ("data_min", c_double),
        ("data_max", c_double),
    ]


# ---------------------------------------------------------------------------
# Loading the library

_P = c_void_p  # every pointer argument is passed as a plain address
_PROTOTYPES = {
    "coreflow_abi_version": (c_uint32, []),
    "coreflow_version": (c_char_p, []),
    "coreflow_last_error_message": (c_char_p, []),
    "coreflow_status_name": (c_char_p, [c_int32]),
    "coreflow_fit_options_init": (None, [_P]),
    "coreflow_sample_options_init": (None, [_P]),
    "coreflow_fit": (c_int32, [_P, _P, _P]),
    "coreflow_model_free": (None, [_P]),
    "coreflow_model_get_info": (c_int32, [_P, _P]),
    "coreflow_model_subspaces": (c_int32, [_P, _P, _P]),
    "coreflow_model_mean": (c_int32, [_P, _P]),
    "coreflow_workspace_size": (c_int32, [_P, c_int32, c_size_t, _P, _P]),
    "coreflow_encode": (c_int32, [_P, _P, _P, _P, c_size_t]),
    "coreflow_decode": (c_int32, [_P, _P, _P, _P, c_size_t]),
    "coreflow_sample": (c_int32, [_P, _P, c_uint64, c_uint64, _P, _P, c_size_t]),
    "coreflow_log_prob": (c_int32, [_P, _P, _P, _P, _P, _P, c_size_t]),
    "coreflow_complete": (c_int32, [_P, _P, _P, _P, c_size_t]),
    "coreflow_impute": (c_int32, [_P, _P, c_uint64, c_uint64, _P, _P, _P, c_size_t]),
    "coreflow_model_save": (c_int32, [_P, c_char_p]),
    "coreflow_model_load": (c_int32, [c_char_p, _P]),
    "coreflow_model_to_bytes": (c_int32, [_P, _P, c_size_t, _P]),
    "coreflow_model_from_bytes": (c_int32, [_P, c_size_t, _P]),
    "coreflow_metrics_options_init": (None, [_P]),
    "coreflow_metrics": (c_int32, [_P, _P, _P, _P]),
    "coreflow_metrics_with_train": (c_int32, [_P, _P, _P, _P, _P]),
}
# Functions added to ABI v1 later: used when the library has them.
_OPTIONAL_PROTOTYPES = {
    "coreflow_fit_options_init_sized": (None, [_P, c_size_t]),
    "coreflow_sample_options_init_sized": (None, [_P, c_size_t]),
    "coreflow_metrics_options_init_sized": (None, [_P, c_size_t]),
}

_LIB_NAMES = {"linux": "libcoreflow.so", "darwin": "libcoreflow.dylib", "win32": "coreflow.dll"}
_lib = None


def bundled_library():
    """The library shipped inside this package (`pip install`), or None
    when the package runs from the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        names = sorted(os.listdir(here))
    except OSError:
        return None
    for name in names:
        if name.startswith("_libcoreflow") and name.endswith((".so", ".dylib", ".dll", ".pyd")):
            return os.path.join(here, name)
    return None


def _candidates():
    name = _LIB_NAMES.get(sys.platform, "libcoreflow.so")
    bundled = bundled_library()
    if bundled:
        yield bundled
    here = os.path.dirname(os.path.abspath(__file__))
    source_tree = os.path.normpath(os.path.join(here, "..", "..", ".."))
    for root in (source_tree, os.getcwd()):
        yield os.path.join(root, "target", "release", name)
    # The system search: the soname of an install, then the development link.
    if sys.platform.startswith("linux"):
        yield "libcoreflow.so.0"
    yield name


def find_library(lib_path=None):
    """The path load() would open: lib_path, $COREFLOW_LIB, or the first
    existing default (see the module documentation)."""
    if lib_path:
        return os.fspath(lib_path)
    if os.environ.get("COREFLOW_LIB"):
        return os.environ["COREFLOW_LIB"]
    for path in _candidates():
        if os.path.sep not in path or os.path.exists(path):
            return path
    raise OSError("libcoreflow not found: install the package with `pip install "
                  "./bindings/python` (builds it), or build it with `cargo build --release` "
                  "in the source tree, or set COREFLOW_LIB to its path")


def load(lib_path=None):
    """Opens the shared library (once per process; later calls return it).

    The first call decides which library is used: `lib_path`, else
    $COREFLOW_LIB, else the default search. Raises OSError when it cannot be
    opened and CoreFlowError (ERR_VERSION) when its ABI differs."""
    global _lib
    if _lib is not None:
        if lib_path and os.path.realpath(lib_path) != os.path.realpath(_lib._name):
            raise OSError(f"libcoreflow is already loaded from {_lib._name}")
        return _lib
    path = find_library(lib_path)
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise OSError(
            f"cannot open the CoreFlow library {path!r} ({e}). Install the Python package "
            f"with `pip install ./bindings/python` (it builds and carries the library), or "
            f"run `cargo build --release` in the source tree, or set COREFLOW_LIB to the "
            f"path of libcoreflow") from e
    for fn, (restype, argtypes) in _PROTOTYPES.items():
        f = getattr(lib, fn)
        f.restype = restype
        f.argtypes = argtypes
    for fn, (restype, argtypes) in _OPTIONAL_PROTOTYPES.items():
        f = getattr(lib, fn, None)
        if f is not None:
            f.restype = restype
            f.argtypes = argtypes
    abi = lib.coreflow_abi_version()
    if abi != ABI_VERSION:
        raise CoreFlowError(
            ERR_VERSION, "COREFLOW_ERR_VERSION",
            f"{path}: library ABI {abi}, this module speaks ABI {ABI_VERSION}")
    _lib = lib
    return lib


def version():
    """The library version string, e.g. "0.1.0"."""
    return load().coreflow_version().decode()


# ---------------------------------------------------------------------------
# Errors

class CoreFlowError(Exception):
    """A failed CoreFlow call: `status` (int), `name` (e.g.
    "COREFLOW_ERR_SHAPE") and `message` (the library's explanation)."""

    def __init__(self, status, name, message):
        super().__init__(f"{name}: {message}")
        self.status = status
        self.name = name
        self.message = message


def _check(status):
    if status != OK:
        lib = load()
        # The message first: it is only valid until the next call.
        message = lib.coreflow_last_error_message().decode(errors="replace")
        name = lib.coreflow_status_name(status).decode()
        raise CoreFlowError(status, name, message)


# ---------------------------------------------------------------------------
# Views of NumPy arrays (no copies)

def _strides_in_elements(arr, what):
    if arr.dtype != np.float64:
        raise TypeError(f"{what}: dtype must be native float64, not {arr.dtype} "
                        f"(convert with .astype(np.float64); nothing is copied implicitly)")
    if arr.ndim != 3:
        raise ValueError(f"{what}: a batch of matrices has 3 axes, got shape {arr.shape}")
    if arr.ctypes.data % arr.itemsize or any(s % arr.itemsize for s in arr.strides):
        raise ValueError(f"{what}: data and strides must be multiples of 8 bytes "
                         f"(strides {arr.strides})")
    return [s // arr.itemsize for s in arr.strides]


def _samples_first(arr, sample_axis):
    if sample_axis not in (0, 2, -1):
        raise ValueError(f"sample_axis: 0 (N, m, n) or -1 (m, n, N), got {sample_axis}")
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = np.moveaxis(arr, sample_axis, 0)  # a view, never a copy
    return arr


def matrices_view(arr, sample_axis=0, mask=None):
    """The coreflow_matrices describing `arr` (float64, 3 axes) in place.
    `mask` (bool or uint8, nonzero = observed) must have the same element
    strides. The view holds references to the arrays it points into
    (`view.arrays`), so an array converted here (e.g. from a nested list)
    lives as long as the view: keep the view for the whole call."""
    x = _samples_first(arr, sample_axis)
    ss, rs, cs = _strides_in_elements(x, "x")
    view = Matrices(x.ctypes.data, None, x.shape[0], x.shape[1], x.shape[2], ss, rs, cs)
    view.arrays = (x,)
    if mask is not None:
        mk = _samples_first(mask, sample_axis)
        if mk.dtype not in (np.bool_, np.uint8) or mk.shape != x.shape:
            raise ValueError(f"mask: bool or uint8 of shape {x.shape} expected")
        if list(mk.strides) != [ss, rs, cs]:
            raise ValueError(f"mask: strides {mk.strides} bytes must equal the data's "
                             f"element strides {(ss, rs, cs)} (same memory order)")
        view.mask = mk.ctypes.data
        view.arrays = (x, mk)
    return view


def matrices_mut_view(arr, sample_axis=0):
    """The coreflow_matrices_mut describing the writable array `arr` in place."""
    x = _samples_first(arr, sample_axis)
    if not x.flags.writeable:
        raise ValueError("out: array is read-only")
    ss, rs, cs = _strides_in_elements(x, "out")
    view = MatricesMut(x.ctypes.data, x.shape[0], x.shape[1], x.shape[2], ss, rs, cs)
    view.arrays = (x,)
    return view


def _check_cores(cores, count, r, s, sample_axis, what, writable):
    """Cores are `count` consecutive column-major r x s blocks; as an array
    (N, r, s) with element strides (r*s, 1, r), like Model.empty_cores gives."""
    c = _samples_first(cores, sample_axis)
    if c.dtype != np.float64 or c.ndim != 3:
        raise TypeError(f"{what}: float64 array with 3 axes expected")
    if count is not None and c.shape != (count, r, s):
        raise ValueError(f"{what}: shape {(count, r, s)} expected (samples first), got {c.shape}")
    if c.shape[1:] != (r, s):
        raise ValueError(f"{what}: each core is {r} x {s}, got {c.shape[1:]}")
    want = (r * s * 8, 8, r * 8)
    if any(n > 1 and st != w for n, st, w in zip(c.shape, c.strides, want)):
        raise ValueError(f"{what}: cores must be consecutive column-major {r} x {s} blocks "
                         f"(byte strides {want}); allocate with Model.empty_cores")
    if writable and not c.flags.writeable:
        raise ValueError(f"{what}: array is read-only")
    return c


# ---------------------------------------------------------------------------
# Options

def _init_struct(cls, name):
    """A `cls` with the library's defaults, from its `name` init function.

    The sized init (`name`_sized) writes at most sizeof(cls) and records how
    much it wrote, so an older library leaves the newer fields zero and
    tells it so. A library without it writes its own sizeof, which a newer
    library may have grown: give it room, then keep the fields known here."""
    lib = load()
    sized = getattr(lib, name + "_sized", None)
    if sized is not None:
        opts = cls()
        sized(ctypes.addressof(opts), ctypes.sizeof(cls))
        return opts
    buf = (c_uint8 * (ctypes.sizeof(cls) + 1024))()
    getattr(lib, name)(buf)
    opts = cls.from_buffer_copy(buf)
    opts.struct_size = min(opts.struct_size, ctypes.sizeof(cls))
    return opts


def _set_fields(opts, fields, hidden, what):
    known = {name for name, _ in type(opts)._fields_} - {"struct_size"} - set(hidden)
    for name, value in fields.items():
        if name not in known:
            raise TypeError(f"{what}: unknown option {name!r}")
        try:
            setattr(opts, name, int(value) if isinstance(value, bool) else value)
        except TypeError as e:  # e.g. a float for an integer field
            raise TypeError(f"{what}: option {name!r}: {e}") from None
    return opts


def fit_options(**fields):
    """A FitOptions with the library's defaults, then `fields` set by name
    (e.g. rank_rows=4, center=True). Unknown names raise TypeError. The
    callbacks are set through Model.fit (progress=, allreduce=)."""
    opts = _init_struct(FitOptions, "coreflow_fit_options_init")
    return _set_fields(opts, fields, ("progress", "progress_user", "allreduce", "allreduce_user"),
                       "fit_options")


def sample_options(**fields):
    """A SampleOptions with the library's defaults (RK4, 16 steps), then
    `fields` set by name (solver=SOLVER_DOPRI5, steps=32, rtol=..., atol=...)."""
    opts = _init_struct(SampleOptions, "coreflow_sample_options_init")
    return _set_fields(opts, fields, (), "sample_options")


def _options_ref(options):
    """The pointer for an optional SampleOptions (None = the defaults)."""
    if options is None:
        return None
    if not isinstance(options, SampleOptions):
        raise TypeError("options: a SampleOptions (see sample_options()) or None")
    return ctypes.addressof(options)


# ---------------------------------------------------------------------------
# Model and workspace

class Workspace:
    """Scratch memory for inference calls, sized by coreflow_workspace_size
    for each of `ops` on `model` with at most `count` matrices (and the
    solver `options` of sample and log_prob; None = defaults). Reuse one per
    thread: calls that receive it never allocate."""

    def __init__(self, model, ops=(OP_ENCODE, OP_DECODE), count=1, options=None):
        lib = load()
        size = 0
        for op in ops:
            n = c_size_t(0)
            _check(lib.coreflow_workspace_size(model.handle, op, count, _options_ref(options),
                                               byref(n)))
            size = max(size, n.value)
        self.buffer = np.empty(max(size, 1), dtype=np.uint8)
        self.nbytes = size
        self.count = count

    @property
    def address(self):
        return self.buffer.ctypes.data


class Model:
    """A fitted model; owns its handle (freed by close(), `with`, or when
    garbage collected). Immutable: threads may share it, each with its own
    Workspace (ctypes releases the GIL during the calls)."""

    def __init__(self, handle):
        self._handle = c_void_p(handle)
        self._lib = load()

    @classmethod
    def fit(cls, x, sample_axis=0, mask=None, progress=None, allreduce=None, **options):
        """Fits a model to the float64 batch `x` without copying it.

        options: fields of coreflow_fit_options by name (rank_rows,
        rank_cols, energy, center, threads, seed, flow_steps, ...).
        progress: called as progress(stage, iteration, total, loss); a true
        result cancels the fit (CoreFlowError with ERR_CANCELLED).
        allreduce: distributed fitting (README, "Scaling out"): called as
        allreduce(buf) with a float64 array over the library's buffer, it
        must sum buf element-wise across all processes in place (with
        mpi4py: comm.Allreduce(MPI.IN_PLACE, buf)); an exception or a
        nonzero result fails the fit with ERR_COMMUNICATION."""
        lib = load()
        view = matrices_view(x, sample_axis, mask)
        opts = fit_options(**options)
        raised = []
        if allreduce is not None:
            def reduce_trampoline(_user, buf, n):
                try:
                    arr = np.ctypeslib.as_array(buf, shape=(n,)) if n else np.empty(0)
                    return 1 if allreduce(arr) else 0
                except BaseException as e:  # reported after the fit returns
                    raised.append(e)
                    return 1
            opts.allreduce = AllreduceFn(reduce_trampoline)
        if progress is not None:
            def trampoline(_user, p):
                try:
                    q = p.contents
                    return 1 if progress(q.stage, q.iteration, q.total, q.loss) else 0
                except BaseException as e:  # reported after the fit returns
                    raised.append(e)
                    return 1
            opts.progress = ProgressFn(trampoline)
        handle = c_void_p()
        status = lib.coreflow_fit(byref(view), byref(opts), byref(handle))
        if raised:
            if status == ERR_COMMUNICATION:
                try:
                    _check(status)
                except CoreFlowError as e:
                    raise e from raised[0]
            raise raised[0]
        _check(status)
        return cls(handle.value)

    @classmethod
    def load(cls, path):
        """Reads a model file (ERR_IO, ERR_FORMAT or ERR_VERSION on failure)."""
        handle = c_void_p()
        _check(load().coreflow_model_load(os.fsencode(path), byref(handle)))
        return cls(handle.value)

    @classmethod
    def from_bytes(cls, data):
        """Reads a model from a file image (bytes, bytearray, memoryview or a
        uint8 array), as written by to_bytes() or save()."""
        buf = np.frombuffer(data, dtype=np.uint8)  # a view, never a copy
        handle = c_void_p()
        _check(load().coreflow_model_from_bytes(buf.ctypes.data, buf.size, byref(handle)))
        return cls(handle.value)

    # Lifetime -------------------------------------------------------------

    def close(self):
        """Frees the model now; later calls raise ValueError."""
        if self._handle is not None and self._handle.value:
            self._lib.coreflow_model_free(self._handle)
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()

    @property
    def handle(self):
        """The raw coreflow_model* (an int), for calls through load()."""
        if self._handle is None:
            raise ValueError("model is closed")
        return self._handle.value

    # Access ---------------------------------------------------------------

    def info(self):
        """The model summary as a dict (the fields of coreflow_model_info):
        sizes and ranks, fit diagnostics, and the core model (core_model is
        CORE_MODEL_FLOW, CORE_MODEL_GAUSSIAN, CORE_MODEL_MIXTURE or
        CORE_MODEL_NONE for a geometry-only model; flow_dim, flow_block,
        mixture_block, mixture_components, heldout_loglik_*)."""
        info = ModelInfo()
        info.struct_size = ctypes.sizeof(ModelInfo)
        _check(self._lib.coreflow_model_get_info(self.handle, byref(info)))
        return {name: getattr(info, name) for name, _ in ModelInfo._fields_[1:]}

    def subspaces(self):
        """(U, V): rows x rank_rows and cols x rank_cols, orthonormal columns."""
        i = self.info()
        u = np.empty((i["rows"], i["rank_rows"]), order="F")
        v = np.empty((i["cols"], i["rank_cols"]), order="F")
        _check(self._lib.coreflow_model_subspaces(self.handle, u.ctypes.data, v.ctypes.data))
        return u, v

    def mean(self):
        """The subtracted mean (rows x cols); zeros when not centered."""
        i = self.info()
        mean = np.empty((i["rows"], i["cols"]), order="F")
        _check(self._lib.coreflow_model_mean(self.handle, mean.ctypes.data))
        return mean

    def workspace(self, count, ops=(OP_ENCODE, OP_DECODE), options=None):
        """A Workspace for up to `count` matrices of each of `ops` (e.g.
        (OP_SAMPLE, OP_LOG_PROB)); `options`: the SampleOptions of sample and
        log_prob calls (None = defaults)."""
        return Workspace(self, ops, count, options)

    def empty_cores(self, count, sample_axis=0):
        """An uninitialised cores array in the layout of the C API:
        (count, r, s) for sample_axis=0, (r, s, count) for -1."""
        i = self.info()
        r, s = i["rank_rows"], i["rank_cols"]
        block = np.empty((r, s, count), order="F")  # count column-major r x s blocks
        return block if sample_axis in (-1, 2) else np.moveaxis(block, 2, 0)

    # Inference -------------------------------------------------------------

    def encode(self, x, out=None, ws=None, sample_axis=0):
        """Cores of the matrices of `x`, written into `out` (default: a new
        empty_cores array) and returned. `ws`: a Workspace to reuse (default:
        one for this call)."""
        view = matrices_view(x, sample_axis)
        i = self.info()
        r, s, n = i["rank_rows"], i["rank_cols"], view.count
        if out is None:
            out = self.empty_cores(n, sample_axis)
        c = _check_cores(out, n, r, s, sample_axis, "out", writable=True)
        ws = ws if ws is not None else Workspace(self, (OP_ENCODE,), n)
        _check(self._lib.coreflow_encode(self.handle, byref(view), c.ctypes.data,
                                         ws.address, ws.nbytes))
        return out

    def decode(self, cores, out=None, ws=None, sample_axis=0):
        """Matrices decoded from `cores`, written into `out` (any float64
        layout; default: a new C-order array) and returned."""
        i = self.info()
        r, s = i["rank_rows"], i["rank_cols"]
        c = _check_cores(cores, None, r, s, sample_axis, "cores", writable=False)
        n = c.shape[0]
        if out is None:
            shape = (n, i["rows"], i["cols"]) if sample_axis == 0 else (i["rows"], i["cols"], n)
            out = np.empty(shape, order="C" if sample_axis == 0 else "F")
        view = matrices_mut_view(out, sample_axis)
        if view.count != n:
            raise ValueError(f"out: {view.count} matrices for {n} cores")
        ws = ws if ws is not None else Workspace(self, (OP_DECODE,), n)
        _check(self._lib.coreflow_decode(self.handle, c.ctypes.data, byref(view),
                                         ws.address, ws.nbytes))
        return out

    def sample(self, count=None, out=None, seed=0, first_index=0, ws=None, options=None,
               sample_axis=0):
        """Draws new matrices into `out` (any writable float64 layout, filled
        in place; default: a new C-order (count, m, n) array, or Fortran-order
        (m, n, count) for sample_axis=-1) and returns it. Matrix j is sample
        number `first_index + j` of stream `seed`: the same (seed, index)
        gives bitwise the same matrix whatever the batch or the thread.
        `options`: a SampleOptions (None = RK4, 16 steps)."""
        i = self.info()
        if out is None:
            if count is None:
                raise TypeError("sample: give count or out")
            shape = (count, i["rows"], i["cols"]) if sample_axis == 0 else (i["rows"], i["cols"], count)
            out = np.empty(shape, order="C" if sample_axis == 0 else "F")
        view = matrices_mut_view(out, sample_axis)
        if count is not None and view.count != count:
            raise ValueError(f"out: holds {view.count} matrices, count is {count}")
        ws = ws if ws is not None else Workspace(self, (OP_SAMPLE,), view.count, options)
        _check(self._lib.coreflow_sample(self.handle, _options_ref(options), seed, first_index,
                                         byref(view), ws.address, ws.nbytes))
        return out

    def log_prob(self, x, residual=False, out=None, ws=None, options=None, sample_axis=0):
        """Log-densities of the matrices of `x` under the model (a density
        over matrices in the learned geometry), written into `out` (default:
        a new array) and returned. With residual=True (or a float64 array to
        fill), returns (log_prob, residual): each matrix's relative distance
        ||Y - U U^T Y V V^T|| / ||Y|| from the geometry, Y = X - Xbar."""
        view = matrices_view(x, sample_axis)
        n = view.count
        lp = _vector_out(out, n, "out")
        res = None
        if residual is not False and residual is not None:
            res = _vector_out(None if residual is True else residual, n, "residual")
        ws = ws if ws is not None else Workspace(self, (OP_LOG_PROB,), n, options)
        _check(self._lib.coreflow_log_prob(self.handle, _options_ref(options), byref(view),
                                           lp.ctypes.data, None if res is None else res.ctypes.data,
                                           ws.address, ws.nbytes))
        return lp if res is None else (lp, res)

    def complete(self, x, mask=None, out=None, ws=None, sample_axis=0):
        """The matrices of `x` with their missing entries completed: those
        where `mask` (bool or uint8, same layout as x) is zero, or the NaN
        entries when mask is None. Observed entries are copied bitwise.
        Written into `out` (must not overlap x; default: a new array in the
        layout of x) and returned."""
        view = matrices_view(x, sample_axis, mask)
        if out is None:
            out = np.empty_like(np.asarray(x), order="K")
        out_view = matrices_mut_view(out, sample_axis)
        ws = ws if ws is not None else Workspace(self, (OP_COMPLETE,), view.count)
        _check(self._lib.coreflow_complete(self.handle, byref(view), byref(out_view),
                                           ws.address, ws.nbytes))
        return out

    def impute(self, x, n_draws, mask=None, seed=0, first_index=0, ws=None, options=None,
               level="fitted"):
        """Multiple imputation: `n_draws` draws of each matrix of `x` (C-order
        (N, m, n)) from the model's law given its observed entries (where
        `mask`, bool or uint8 (N, m, n), is nonzero, or the non-NaN entries
        when mask is None), as a new (n_draws, N, m, n) array. Observed
        entries are copied bitwise; missing ones get the core drawn from
        its posterior plus noise of the model's noise law (variance profile
        over rows and columns, Gaussian or Student-t tails; info()["noise_dof"],
        info()["noise_profile_spread"]), truncated at info()["noise_bound"]
        standard deviations and censored to the training range
        [info()["data_min"], info()["data_max"]]. Draw k of matrix i is
        draw number first_index + i * n_draws + k of stream `seed`
        (coreflow_impute with a partial of sample stride 0 per matrix).
        `options`: a SampleOptions (the flow's solver; None = defaults).
        `level`: the noise level of the draws, "fitted" (the model's sigma^2,
        the exact posterior under the model) or "observed" (sigma^2 times a
        multiplier re-estimated on each matrix's observed entries;
        IMPUTE_LEVEL_OBSERVED); None keeps options.impute_level."""
        options = _impute_options(options, level)
        x = np.asarray(x)
        if x.dtype != np.float64 or x.ndim != 3:
            raise TypeError("x: float64 array (N, m, n) expected")
        n_draws = int(n_draws)
        if n_draws < 0:
            raise ValueError(f"n_draws: must be non-negative, got {n_draws}")
        count, m, n = x.shape
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype not in (np.bool_, np.uint8) or mask.shape != x.shape:
                raise ValueError(f"mask: bool or uint8 of shape {x.shape} expected")
        out = np.empty((n_draws, count, m, n))
        if n_draws == 0 or count == 0:
            return out
        ws = ws if ws is not None else Workspace(self, (OP_IMPUTE,), n_draws, options)
        for i in range(count):
            xi = np.broadcast_to(np.ascontiguousarray(x[i]), (n_draws, m, n))
            mi = None
            if mask is not None:
                mi = np.broadcast_to(np.ascontiguousarray(mask[i]).view(np.uint8)
                                     if mask.dtype == np.bool_
                                     else np.ascontiguousarray(mask[i]), (n_draws, m, n))
            view = matrices_view(xi, 0, mi)
            out_view = matrices_mut_view(out[:, i], 0)
            _check(self._lib.coreflow_impute(self.handle, _options_ref(options), seed,
                                             first_index + i * n_draws, byref(view),
                                             byref(out_view), ws.address, ws.nbytes))
        return out

    # Persistence -----------------------------------------------------------

    def save(self, path):
        """Writes the model file (versioned, checksummed) to `path`."""
        _check(self._lib.coreflow_model_save(self.handle, os.fsencode(path)))

    def to_bytes(self):
        """The model file image, as bytes."""
        n = c_size_t(0)
        _check(self._lib.coreflow_model_to_bytes(self.handle, None, 0, byref(n)))
        buf = (c_uint8 * n.value)()
        _check(self._lib.coreflow_model_to_bytes(self.handle, buf, n.value, byref(n)))
        return bytes(buf)[:n.value]


def _vector_out(arr, n, what):
    """A float64 vector of n entries to be written by the library: `arr`
    itself (contiguous, writable) or a new one."""
    if arr is None:
        return np.empty(n)
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.shape != (n,):
        raise ValueError(f"{what}: float64 array of shape ({n},) expected")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{what}: must be contiguous and writable")
    return arr


# The scikit-learn style estimator and the metrics, over the pieces above.
from .estimator import ENUMS, CoreFlow, CoreFlowWarning, metrics  # noqa: E402
