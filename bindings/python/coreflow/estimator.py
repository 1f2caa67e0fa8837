"""The scikit-learn style interface: the `CoreFlow` estimator and `metrics`.

Every input is any array-like of shape (N, m, n) (nested lists, float32 or
integer arrays, non-contiguous or Fortran-order arrays): it is converted to
float64 at most once, and the converted array is held by the method for the
whole library call. Results are new NumPy arrays.
"""

import copy
import ctypes
import inspect
import numbers
import warnings
from ctypes import byref

import numpy as np

from . import (
    CORE_MODEL_AUTO,
    CORE_MODEL_FLOW,
    CORE_MODEL_GAUSSIAN,
    CORE_MODEL_MIXTURE,
    CORE_MODEL_NONE,
    COUPLING_INDEPENDENT,
    COUPLING_MINIBATCH_OT,
    SOLVER_DOPRI5,
    SOLVER_EULER,
    SOLVER_HEUN,
    SOLVER_RK4,
    SUBSPACE_METHOD_HOOI,
    SUBSPACE_METHOD_RIEMANNIAN,
    MetricsOptions,
    MetricsResult,
    Model,
    _check,
    _init_struct,
    load,
    matrices_view,
    sample_options,
)

__all__ = ["CoreFlow", "CoreFlowWarning", "metrics", "ENUMS"]

# The string values of every enumerated option, and the C constant each one
# stands for: the one table to extend when the library gains a kind.
ENUMS = {
    "core_model": {
        "auto": CORE_MODEL_AUTO,
        "flow": CORE_MODEL_FLOW,
        "gaussian": CORE_MODEL_GAUSSIAN,
        "mixture": CORE_MODEL_MIXTURE,
    },
    "subspace_method": {
        "hooi": SUBSPACE_METHOD_HOOI,
        "riemannian": SUBSPACE_METHOD_RIEMANNIAN,
    },
    "coupling": {
        "independent": COUPLING_INDEPENDENT,
        "minibatch_ot": COUPLING_MINIBATCH_OT,
    },
    "solver": {
        "euler": SOLVER_EULER,
        "heun": SOLVER_HEUN,
        "rk4": SOLVER_RK4,
        "dopri5": SOLVER_DOPRI5,
    },
}

# Estimator parameters passed to coreflow_fit_options under the same name.
_FIT_FIELDS = (
    "energy", "center", "subspace_method", "subspace_max_iter", "subspace_tol",
    "completion_max_iter", "completion_tol", "ridge", "flow_hidden", "flow_layers",
    "flow_time_freqs", "flow_energy", "flow_max_dim", "flow_steps", "batch_size",
    "learning_rate", "weight_decay", "ema_decay", "coupling", "threads", "core_model",
    "holdout_fraction", "flow_noise_gap",
)
# Estimator parameters of sampling and scoring (coreflow_sample_options).
_SAMPLE_FIELDS = ("solver", "steps", "rtol", "atol")


class CoreFlowWarning(UserWarning):
    """A fit that worked but deserves a look (e.g. a core with more
    dimensions than there are training matrices)."""


def _enum_value(option, value):
    table = ENUMS[option]
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    allowed = ", ".join(repr(k) for k in table)
    raise ValueError(f"{option}: {value!r} is not one of {allowed}")


def _enum_name(option, code):
    for name, value in ENUMS[option].items():
        if value == code:
            return name
    return code


def _as_batch(x, what):
    """`x` as a float64 array of 3 axes that the C views can describe: the
    array itself when it already is one, else one converted copy."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what}: numbers expected, got an array of dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{what}: a batch of matrices of shape (N, m, n) expected, "
                         f"got shape {arr.shape}")
    if arr.dtype != np.float64 or not arr.dtype.isnative:
        arr = arr.astype(np.float64)
    elif any(s % 8 for s in arr.strides) or arr.ctypes.data % 8:
        arr = np.ascontiguousarray(arr)
    return arr


def _as_mask(mask, shape, what="mask"):
    """`mask` (any array-like, nonzero = observed) as a C-order uint8 array."""
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{what}: shape {shape} expected (the data's), got {m.shape}")
    return np.ascontiguousarray(m != 0, dtype=np.uint8)


def _seed(random_state, what="random_state"):
    """An unsigned 64-bit seed: an int as it is, None for a fresh one, a
    NumPy Generator or RandomState draws one."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**63, dtype=np.int64))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if 0 <= int(random_state) < 2**64:
            return int(random_state)
    raise ValueError(f"{what}: an integer in [0, 2**64), a numpy Generator or RandomState, "
                     f"or None; got {random_state!r}")


def _count(n, what):
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what}: a positive integer expected, got {n!r}")
    return int(n)


class CoreFlow:
    """Generative model of matrix-valued data, scikit-learn style.

    Learns shared orthonormal bases U (m x r) and V (n x s), projects each
    matrix X to its core C = U^T (X - Xbar) V and models the cores with a
    flow or a Gaussian; new matrices are U C V^T + Xbar.

    Parameters (defaults are the library's; see include/coreflow.h):
      rank: None (choose both ranks by `energy`), an int for both, or (r, s).
      energy: fraction of the energy the ranks chosen by energy keep.
      center: subtract the entrywise mean first.
      core_model: "auto" (a Gaussian mixture or a flow when it beats the
        simpler kinds on held-out cores), "flow", "mixture" or "gaussian".
      subspace_method: "hooi" or "riemannian"; subspace_max_iter, subspace_tol.
      completion_max_iter, completion_tol, ridge: fitting incomplete data.
      flow_*, batch_size, learning_rate, weight_decay, ema_decay, coupling
        ("independent" or "minibatch_ot"), holdout_fraction: the flow;
        flow_steps=0 fits the geometry only (no sampling or scoring)
        unless core_model is "gaussian" or "mixture".
      random_state: seed of the fit (an int; None = 0).
      threads: worker threads of the fit (0 = all cores).
      solver ("euler", "heun", "rk4", "dopri5"), steps, rtol, atol: the
        ODE solver of sample, score_samples and complete.

    Fitted attributes: model_ (the low-level Model), U_, V_, mean_ (None
    unless centered), ranks_ (r, s), shape_ (m, n), info_ (the model
    summary as a dict, core_model as its name), n_samples_fit_.
    """

    def __init__(self, rank=None, *, energy=0.99, center=False, core_model="auto",
                 subspace_method="hooi", subspace_max_iter=100, subspace_tol=1e-10,
                 completion_max_iter=100, completion_tol=1e-8, ridge=1e-8,
                 flow_hidden=256, flow_layers=3, flow_time_freqs=16, flow_energy=0.999,
                 flow_max_dim=0, flow_steps=4000, batch_size=128, learning_rate=1e-2,
                 weight_decay=0.0, ema_decay=0.999, coupling="independent",
                 holdout_fraction=0.2, flow_noise_gap=10.0, random_state=0, threads=0,
                 solver="rk4", steps=16, rtol=1e-5, atol=1e-5):
        self.rank = rank
        self.energy = energy
        self.center = center
        self.core_model = core_model
        self.subspace_method = subspace_method
        self.subspace_max_iter = subspace_max_iter
        self.subspace_tol = subspace_tol
        self.completion_max_iter = completion_max_iter
        self.completion_tol = completion_tol
        self.ridge = ridge
        self.flow_hidden = flow_hidden
        self.flow_layers = flow_layers
        self.flow_time_freqs = flow_time_freqs
        self.flow_energy = flow_energy
        self.flow_max_dim = flow_max_dim
        self.flow_steps = flow_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.coupling = coupling
        self.holdout_fraction = holdout_fraction
        self.flow_noise_gap = flow_noise_gap
        self.random_state = random_state
        self.threads = threads
        self.solver = solver
        self.steps = steps
        self.rtol = rtol
        self.atol = atol

    # scikit-learn protocol ---------------------------------------------------

    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self")

    def get_params(self, deep=True):
        """The constructor parameters as a dict."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Sets constructor parameters by name; returns self. An unknown
        name raises ValueError listing the valid ones."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for CoreFlow; valid parameters "
                                 f"are: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default
                    for p in inspect.signature(type(self).__init__).parameters.values()
                    if p.name != "self"}
        changed = []
        for name in self._param_names():
            value = getattr(self, name)
            default = defaults[name]
            if not (value is default or (type(value) is type(default) and value == default)):
                changed.append(f"{name}={value!r}")
        return f"CoreFlow({', '.join(changed)})"

    # Options -----------------------------------------------------------------

    def _ranks(self):
        rank = self.rank
        if rank is None:
            return 0, 0
        if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
            pair = (rank, rank)
        else:
            try:
                pair = tuple(rank)
            except TypeError:
                pair = ()
        if (len(pair) != 2 or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool)
                                      and k >= 1 for k in pair)):
            raise ValueError(f"rank: None (chosen by energy), a positive int or a pair (r, s) of "
                             f"positive ints expected, got {rank!r}")
        return int(pair[0]), int(pair[1])

    def _fit_options(self):
        fields = {}
        for name in _FIT_FIELDS:
            value = getattr(self, name)
            if name in ENUMS:
                value = _enum_value(name, value)
            elif isinstance(value, (bool, np.bool_)):
                value = int(value)
            elif not isinstance(value, numbers.Real):
                raise TypeError(f"{name}: a number expected, got {value!r}")
            if isinstance(value, numbers.Integral) and value < 0:
                raise ValueError(f"{name}: must not be negative, got {value!r}")
            fields[name] = value
        fields["rank_rows"], fields["rank_cols"] = self._ranks()
        fields["seed"] = 0 if self.random_state is None else _seed(self.random_state)
        from . import fit_options
        return fit_options(**fields)

    def _sample_options(self):
        fields = {"solver": _enum_value("solver", self.solver)}
        for name in ("steps", "rtol", "atol"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: a non-negative number expected, got {value!r}")
            fields[name] = int(value) if name == "steps" else float(value)
        return sample_options(**fields)

    # Fitting -------------------------------------------------------------------

    def fit(self, X, mask=None, y=None):
        """Fits the model to the matrices X (N, m, n); returns self.

        mask: nonzero where an entry is observed (same shape as X); without
        one, NaN entries of X are missing. `y` is ignored (scikit-learn
        passes it by keyword or as None)."""
        x = _as_batch(X, "X")
        opts = self._fit_options()
        mk = None
        if mask is not None:
            mk = _as_mask(mask, x.shape)
            x = np.ascontiguousarray(x)
        elif np.isnan(x).any():
            opts.nan_is_missing = 1
        lib = load()
        view = matrices_view(x, 0, mk)
        handle = ctypes.c_void_p()
        _check(lib.coreflow_fit(byref(view), byref(opts), byref(handle)))
        self._set_fitted(Model(handle.value))
        return self

    def _set_fitted(self, model):
        self.model_ = model
        info = model.info()
        info["core_model"] = ("none" if info["core_model"] == CORE_MODEL_NONE
                              else _enum_name("core_model", info["core_model"]))
        self.info_ = info
        self.U_, self.V_ = model.subspaces()
        self.mean_ = model.mean() if info["centered"] else None
        self.ranks_ = (info["rank_rows"], info["rank_cols"])
        self.shape_ = (info["rows"], info["cols"])
        self.n_samples_fit_ = info["train_count"]
        shortfall = self._energy_shortfall(info)
        if shortfall:
            warnings.warn(shortfall, CoreFlowWarning, stacklevel=3)
        if info["core_dim"] > info["train_count"]:
            warnings.warn(
                f"the core has {info['core_dim']} dimensions (ranks {self.ranks_[0]} x "
                f"{self.ranks_[1]}) but there are only {info['train_count']} training matrices: "
                f"its model is poorly determined; choose smaller ranks (rank=) or a lower energy",
                CoreFlowWarning, stacklevel=3)

    def _energy_shortfall(self, info):
        """Why ranks chosen by energy keep less than the requested energy
        (the library's rule: the core has at most half as many dimensions as
        there are training matrices), or None."""
        if self.rank is not None or self.energy is None or info["masked"]:
            return None
        explained, energy = info["explained_energy"], float(self.energy)
        if not explained < energy - 1e-9:
            return None
        r, s, count = info["rank_rows"], info["rank_cols"], info["train_count"]
        cap = max(1, count // 2)
        if r == info["rows"] and s == info["cols"]:
            why = "the ranks are full"
        elif (r + 1) * s > cap and r * (s + 1) > cap:
            why = (f"ranks chosen by energy keep the core at most {cap} dimensions (half the "
                   f"{count} training matrices), and {r} x {s} is the largest within that; pass "
                   f"rank=(r, s) to go beyond")
        else:
            why = "the ranks were raised as far as the fit allows; pass rank=(r, s)"
        return f"explained energy {explained:.4f} is below the requested {energy}: {why}"

    def _fitted(self):
        model = getattr(self, "model_", None)
        if model is None:
            raise ValueError("this CoreFlow is not fitted yet: call fit(X) first")
        return model

    def _batch(self, X, what="X"):
        x = _as_batch(X, what)
        if x.shape[1:] != self.shape_:
            raise ValueError(f"{what}: matrices of {self.shape_[0]} x {self.shape_[1]} expected "
                             f"(as fitted), got {x.shape[1]} x {x.shape[2]}")
        return x

    # Generation and scoring ------------------------------------------------------

    def sample(self, n_samples=1, random_state=None):
        """n_samples new matrices, (n_samples, m, n). Matrix j is sample j of
        the stream `random_state` (an int): the same seed gives bitwise the
        same matrices. None draws a fresh seed."""
        model = self._fitted()
        n = _count(n_samples, "n_samples")
        seed = _seed(random_state)
        return model.sample(n, seed=seed, options=self._sample_options())

    def score_samples(self, X):
        """Log-likelihood of each matrix of X under the model, (N,)."""
        x = self._batch(X)
        return self._fitted().log_prob(x, options=self._sample_options())

    def score(self, X, y=None):
        """Mean log-likelihood of the matrices of X."""
        return float(np.mean(self.score_samples(X)))

    def residual(self, X):
        """Each matrix's relative distance from the fitted geometry,
        ||Y - U U^T Y V V^T|| / ||Y|| with Y = X - mean, (N,)."""
        x = self._batch(X)
        model = self._fitted()
        if self.info_["core_model"] == "none":
            # Geometry only: the distance needs no core model.
            y = x - self.mean_ if self.mean_ is not None else x
            proj = np.einsum("ia,ja,njk,kb,lb->nil", self.U_, self.U_, y, self.V_, self.V_,
                             optimize=True)
            num = np.linalg.norm((y - proj).reshape(len(y), -1), axis=1)
            den = np.linalg.norm(y.reshape(len(y), -1), axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        _, res = model.log_prob(x, residual=True, options=self._sample_options())
        return res

    # Cores -------------------------------------------------------------------------

    def transform(self, X):
        """The cores U^T (X - mean) V of the matrices of X, (N, r, s)."""
        x = self._batch(X)
        return np.ascontiguousarray(self._fitted().encode(x))

    def inverse_transform(self, C):
        """The matrices U C V^T + mean of the cores C, (N, m, n)."""
        model = self._fitted()
        c = np.asarray(C, dtype=np.float64)
        r, s = self.ranks_
        if c.ndim != 3 or c.shape[1:] != (r, s):
            raise ValueError(f"C: cores of shape (N, {r}, {s}) expected, got {c.shape}")
        block = model.empty_cores(c.shape[0])
        block[...] = c
        return model.decode(block)

    def complete(self, X, mask=None):
        """X with its missing entries filled in, (N, m, n): entries where
        `mask` is zero, or the NaN entries when no mask is given. Observed
        entries are kept as they are."""
        model = self._fitted()
        x = self._batch(X)
        mk = None
        if mask is not None:
            mk = _as_mask(mask, x.shape)
            x = np.ascontiguousarray(x)
        return model.complete(x, mask=mk, out=np.empty(x.shape))

    def impute(self, X, n_draws, mask=None, random_state=None, level="fitted"):
        """Multiple imputation: n_draws completions of each matrix of X drawn
        from the model's law given its observed entries, (n_draws, N, m, n).
        Missing entries are where `mask` is zero, or the NaN entries when no
        mask is given; observed entries are kept as they are. Quantiles over
        the first axis give intervals for the missing entries. Draw k of
        matrix i is draw i * n_draws + k of the stream `random_state` (an
        int; None draws a fresh seed). `level`: "fitted" (the noise level
        fitted on the training set; the exact posterior under the model) or
        "observed" (that level times a multiplier re-estimated on each
        matrix's observed entries)."""
        model = self._fitted()
        x = np.ascontiguousarray(self._batch(X))
        n = _count(n_draws, "n_draws")
        mk = None
        if mask is not None:
            mk = np.ascontiguousarray(_as_mask(mask, x.shape))
        return model.impute(x, n, mask=mk, seed=_seed(random_state),
                            options=self._sample_options(), level=level)

    # Persistence ---------------------------------------------------------------------

    def __getstate__(self):
        state = dict(self.__dict__)
        model = state.pop("model_", None)
        if model is not None:
            state["model_bytes_"] = model.to_bytes()
        return state

    def __setstate__(self, state):
        state = dict(state)
        image = state.pop("model_bytes_", None)
        self.__dict__.update(state)
        if image is not None:
            self.model_ = Model.from_bytes(image)

    def __deepcopy__(self, memo):
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def save(self, path):
        """Writes the fitted model to a model file (readable by the C API,
        the command-line tool and CoreFlow.load)."""
        self._fitted().save(path)

    @classmethod
    def load(cls, path, **params):
        """A fitted CoreFlow from a model file; `params` set the sampling
        and scoring parameters (solver, steps, ...)."""
        est = cls(**params)
        est._set_fitted(Model.load(path))
        return est


def metrics(real, generated, train=None, top_k=10, threads=0):
    """Scores the `generated` matrices against the `real` ones (both any
    array-like of shape (N, m, n), at least 2 matrices each, the same m x n)
    with the metrics of the design: a dict of every field of
    coreflow_metrics_result (sve, topk_w1, mmd2, mean_error, rowcov_error,
    colcov_error, nn_accuracy, dcr_ratio, ...). Lower is better for the
    errors and mmd2 (the unbiased estimate, which can be slightly negative
    when the sets match); nn_accuracy is best at 0.5; dcr_ratio, which
    needs the training set `train` (NaN without it), below 1 means the
    generator copies its training matrices."""
    a = _as_batch(real, "real")
    b = _as_batch(generated, "generated")
    t = None if train is None else _as_batch(train, "train")
    top_k = _count(top_k, "top_k")
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads: a non-negative integer expected, got {threads!r}")
    lib = load()
    opts = _init_struct(MetricsOptions, "coreflow_metrics_options_init")
    opts.top_k = top_k
    opts.threads = int(threads)
    out = MetricsResult()
    out.struct_size = ctypes.sizeof(MetricsResult)
    va = matrices_view(a)
    vb = matrices_view(b)
    if t is None:
        _check(lib.coreflow_metrics(byref(va), byref(vb), byref(opts), byref(out)))
    else:
        vt = matrices_view(t)
        _check(lib.coreflow_metrics_with_train(byref(va), byref(vb), byref(vt), byref(opts), byref(out)))
    return {name: getattr(out, name) for name, _ in MetricsResult._fields_ if name != "struct_size"}
