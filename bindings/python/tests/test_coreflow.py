"""Tests of the low-level ctypes binding (coreflow.Model, views, options),
of the calling pattern of the Julia binding (dlopen, raw pointers,
column-major strides), and of both bindings' struct mirrors, constants and
function signatures against include/coreflow.h.

Flows are tiny here (a few hundred steps of a 2 x 32 network): the tests
check the plumbing, not the quality of the model.

Run: python -m unittest discover -s bindings/python/tests -v with the
package installed (`pip install ./bindings/python`; scripts/test.sh does
this in a fresh virtual environment), or with PYTHONPATH=bindings/python and
libcoreflow from `cargo build --release` (or $COREFLOW_LIB).
"""

import ctypes
import os
import re
import tempfile
import threading
import unittest
from ctypes import byref, c_int32, c_size_t, c_uint32, c_void_p
from unittest import mock

import numpy as np

import synthetic

import coreflow

# The source tree these tests belong to (for the header and CoreFlow.jl).
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def planted(count=40, rows=20, cols=16, r=3, s=2, noise=1e-3, seed=5):
    """count matrices U C_i V^T + noise, C-order (count, rows, cols)."""
    return synthetic.planted(count, rows, cols, r, s, noise, seed)


def same_value(a, b):
    """a == b, with NaN equal to NaN."""
    return a == b or (a != a and b != b)


# Small flow settings for every test that trains one.
SMALL_FLOW = dict(flow_steps=200, flow_hidden=32, flow_layers=2, batch_size=64, threads=1)


class FitLayouts(unittest.TestCase):
    """C-order and Fortran-order inputs pass without copies and give the same model."""

    @classmethod
    def setUpClass(cls):
        cls.x = planted()
        cls.model = coreflow.Model.fit(cls.x, rank_rows=3, rank_cols=2, flow_steps=0, threads=1)

    def test_views_point_at_the_arrays(self):
        x = self.x
        v = coreflow.matrices_view(x)
        self.assertEqual(v.data, x.ctypes.data)
        self.assertEqual((v.sample_stride, v.row_stride, v.col_stride), (20 * 16, 16, 1))
        f = np.asfortranarray(x)
        vf = coreflow.matrices_view(f)
        self.assertEqual(vf.data, f.ctypes.data)
        self.assertEqual((vf.sample_stride, vf.row_stride, vf.col_stride), (1, 40, 40 * 20))
        j = np.asfortranarray(np.moveaxis(x, 0, -1))  # Julia's (m, n, N)
        vj = coreflow.matrices_view(j, sample_axis=-1)
        self.assertEqual(vj.data, j.ctypes.data)
        self.assertEqual((vj.sample_stride, vj.row_stride, vj.col_stride), (20 * 16, 1, 20))

    def test_fortran_order_gives_the_same_model(self):
        u, v = self.model.subspaces()
        for layout in (np.asfortranarray(self.x),                      # (N, m, n), Fortran order
                       np.asfortranarray(np.moveaxis(self.x, 0, -1)),  # (m, n, N), Fortran order
                       self.x[::-1]):                                   # negative sample stride
            axis = -1 if layout.shape[-1] == self.x.shape[0] else 0
            with coreflow.Model.fit(layout, sample_axis=axis, rank_rows=3, rank_cols=2, flow_steps=0,
                                    threads=1) as other:
                uf, vf = other.subspaces()
                np.testing.assert_allclose(uf, u, atol=1e-10)
                np.testing.assert_allclose(vf, v, atol=1e-10)
                self.assertEqual(other.info()["train_count"], 40)

    def test_info_and_mean(self):
        info = self.model.info()
        self.assertEqual((info["rows"], info["cols"]), (20, 16))
        self.assertEqual((info["rank_rows"], info["rank_cols"], info["core_dim"]), (3, 2, 6))
        self.assertGreater(info["explained_energy"], 0.999)
        self.assertEqual(info["centered"], 0)
        self.assertTrue(np.all(self.model.mean() == 0.0))
        u, v = self.model.subspaces()
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(v.T @ v, np.eye(2), atol=1e-12)


class NoCopyOutputs(unittest.TestCase):
    """Preallocated outputs are filled in place, in any layout."""

    @classmethod
    def setUpClass(cls):
        cls.x = planted(seed=6)
        cls.model = coreflow.Model.fit(cls.x, rank_rows=3, rank_cols=2, flow_steps=0, center=True, threads=1)

    def test_encode_into_preallocated_cores(self):
        u, v = self.model.subspaces()
        mean = self.model.mean()
        ws = self.model.workspace(len(self.x))
        out = self.model.empty_cores(len(self.x))
        out.fill(np.nan)
        got = self.model.encode(self.x, out=out, ws=ws)
        self.assertIs(got, out)
        want = np.einsum("ia,nij,jb->nab", u, self.x - mean, v)
        np.testing.assert_allclose(out, want, atol=1e-12)
        # The cores buffer is the C layout: column-major r x s blocks.
        self.assertEqual(out.strides, (6 * 8, 8, 3 * 8))

    def test_decode_into_a_strided_slice(self):
        cores = self.model.encode(self.x)
        big = np.full((len(self.x), 20, 32), np.nan)
        out = big[:, :, ::2]  # every other column of a larger array
        got = self.model.decode(cores, out=out, ws=self.model.workspace(len(self.x)))
        self.assertIs(got, out)
        self.assertTrue(np.shares_memory(got, big))
        self.assertTrue(np.all(np.isnan(big[:, :, 1::2])), "decode wrote outside the view")
        u, v = self.model.subspaces()
        want = np.einsum("ia,nab,jb->nij", u, cores, v) + self.model.mean()
        np.testing.assert_allclose(out, want, atol=1e-12)
        self.assertLess(np.linalg.norm(out - self.x) / np.linalg.norm(self.x), 1e-2)

    def test_samples_last_layout(self):
        xj = np.asfortranarray(np.moveaxis(self.x, 0, -1))
        cores = self.model.encode(xj, sample_axis=-1)
        self.assertEqual(cores.shape, (3, 2, len(self.x)))
        self.assertTrue(cores.flags.f_contiguous)
        np.testing.assert_allclose(np.moveaxis(cores, -1, 0), self.model.encode(self.x), atol=1e-12)
        out = np.empty_like(xj, order="F")
        self.assertIs(self.model.decode(cores, out=out, sample_axis=-1), out)
        np.testing.assert_allclose(np.moveaxis(out, -1, 0), self.model.decode(self.model.encode(self.x)),
                                   atol=1e-12)

    def test_workspace_is_reused(self):
        ws = self.model.workspace(4)
        cores = self.model.empty_cores(4)
        before = ws.buffer.ctypes.data
        for k in range(3):
            self.model.encode(self.x[4 * k:4 * k + 4], out=cores, ws=ws)
        self.assertEqual(ws.buffer.ctypes.data, before)


class Errors(unittest.TestCase):
    """Status codes map to CoreFlowError with the name and the library's message."""

    @classmethod
    def setUpClass(cls):
        cls.x = planted(seed=7)
        cls.model = coreflow.Model.fit(cls.x, rank_rows=3, rank_cols=2, flow_steps=0, threads=1)

    def assertCoreFlowError(self, name, word, fn, *args, **kw):
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            fn(*args, **kw)
        e = cm.exception
        self.assertEqual(e.name, name)
        self.assertEqual(e.status, getattr(coreflow, name[len("COREFLOW_"):]))
        self.assertIn(word, e.message)
        self.assertIn(name, str(e))
        return e

    def test_bad_shape(self):
        wrong = np.zeros((4, 21, 16))
        self.assertCoreFlowError("COREFLOW_ERR_SHAPE", "input", self.model.encode, wrong)
        cores = self.model.encode(self.x[:4])
        self.assertCoreFlowError("COREFLOW_ERR_SHAPE", "out", self.model.decode, cores,
                                 out=np.zeros((4, 20, 15)))
        # Output views whose elements alias are refused by the library.
        aliased = np.ndarray((4, 20, 16), buffer=np.zeros(20 * 16), strides=(0, 128, 8))
        self.assertCoreFlowError("COREFLOW_ERR_SHAPE", "out", self.model.decode, cores, out=aliased)

    def test_nan(self):
        x = self.x.copy()
        x[3, 4, 5] = np.nan
        e = self.assertCoreFlowError("COREFLOW_ERR_NON_FINITE", "train", coreflow.Model.fit, x,
                                     rank_rows=3, rank_cols=2, flow_steps=0)
        self.assertIn("matrix 3", e.message)
        self.assertIn("row 4, column 5", e.message)
        self.assertCoreFlowError("COREFLOW_ERR_NON_FINITE", "input", self.model.encode, x)

    def test_invalid_options(self):
        self.assertCoreFlowError("COREFLOW_ERR_INVALID_ARGUMENT", "rank_rows", coreflow.Model.fit,
                                 self.x, rank_rows=21)
        self.assertCoreFlowError("COREFLOW_ERR_INVALID_ARGUMENT", "hidden", coreflow.Model.fit,
                                 self.x, rank_rows=3, rank_cols=2, flow_hidden=0, flow_steps=5)
        with self.assertRaises(TypeError):
            coreflow.fit_options(rank_row=3)

    def test_workspace_too_small(self):
        self.assertCoreFlowError("COREFLOW_ERR_WORKSPACE", "ws_bytes", self.model.encode, self.x,
                                 ws=self.model.workspace(0, ops=()))

    def test_progress_cancels_and_reraises(self):
        seen = []
        self.assertCoreFlowError("COREFLOW_ERR_CANCELLED", "cancel", coreflow.Model.fit, self.x,
                                 rank_rows=3, rank_cols=2, flow_steps=0,
                                 progress=lambda *p: seen.append(p) or True)
        self.assertEqual(seen[0][0], coreflow.STAGE_SUBSPACE)

        def boom(*_):
            raise KeyError("from the callback")
        with self.assertRaises(KeyError):
            coreflow.Model.fit(self.x, rank_rows=3, rank_cols=2, flow_steps=0, progress=boom)

    def test_views_refuse_copies(self):
        with self.assertRaises(TypeError):
            coreflow.Model.fit(self.x.astype(np.float32), rank_rows=3, rank_cols=2, flow_steps=0)
        with self.assertRaises(ValueError):
            coreflow.Model.fit(self.x[0], rank_rows=3, rank_cols=2, flow_steps=0)  # two axes
        with self.assertRaises(ValueError):  # cores not in the C layout
            self.model.decode(np.zeros((4, 3, 2)))
        readonly = np.zeros((4, 20, 16))
        readonly.flags.writeable = False
        with self.assertRaises(ValueError):
            self.model.decode(self.model.encode(self.x[:4]), out=readonly)

    def test_closed_model(self):
        m = coreflow.Model.fit(self.x, rank_rows=3, rank_cols=2, flow_steps=0)
        m.close()
        m.close()  # twice is fine
        with self.assertRaises(ValueError):
            m.info()


class Sampling(unittest.TestCase):
    """Sampling, scoring, completion and persistence of a model with a flow."""

    @classmethod
    def setUpClass(cls):
        cls.x = planted(count=120, seed=9)
        # A forced flow: AUTO takes the Gaussian on these planted cores.
        cls.model = coreflow.Model.fit(cls.x, rank_rows=3, rank_cols=2, center=True, seed=3,
                                       core_model=coreflow.CORE_MODEL_FLOW, **SMALL_FLOW)

    def test_info_has_the_core_model(self):
        info = self.model.info()
        self.assertEqual(info["core_model"], coreflow.CORE_MODEL_FLOW)
        self.assertEqual((info["has_flow"], info["flow_hidden"], info["flow_layers"]), (1, 32, 2))
        self.assertTrue(1 <= info["flow_dim"] <= info["flow_block"] <= info["core_dim"])
        self.assertTrue(np.isfinite(info["final_loss"]))
        self.assertTrue(np.isfinite(info["heldout_loglik_flow"]))
        self.assertTrue(np.isfinite(info["heldout_loglik_gaussian"]))
        self.assertGreater(info["noise_variance"], 0)
        self.assertEqual((info["masked"], info["completion_iterations"]), (0, 0))
        self.assertTrue(np.isnan(info["completion_objective"]))

    def test_sample_into_preallocated_arrays(self):
        want = self.model.sample(6, seed=4)
        self.assertEqual(want.shape, (6, 20, 16))
        ws = self.model.workspace(6, ops=(coreflow.OP_SAMPLE,))
        for out, axis in ((np.empty((6, 20, 16)), 0),                     # C order
                          (np.empty((6, 20, 16), order="F"), 0),          # Fortran order
                          (np.empty((20, 16, 6), order="F"), -1),         # Julia's (m, n, N)
                          (np.full((6, 20, 32), np.nan)[:, :, ::2], 0)):  # a strided slice
            before = out.ctypes.data
            got = self.model.sample(out=out, seed=4, ws=ws, sample_axis=axis)
            self.assertIs(got, out)
            self.assertEqual(out.ctypes.data, before)
            samples_first = np.moveaxis(out, -1, 0) if axis == -1 else out
            self.assertTrue(np.array_equal(samples_first, want), f"layout {out.strides}")

    def test_sample_index_is_the_stream_position(self):
        whole = self.model.sample(5, seed=8)
        head = self.model.sample(2, seed=8)
        tail = self.model.sample(3, seed=8, first_index=2)
        self.assertTrue(np.array_equal(np.concatenate([head, tail]), whole))
        self.assertFalse(np.array_equal(self.model.sample(5, seed=9), whole))

    def test_log_prob_and_residual(self):
        gen = self.model.sample(4, seed=1)
        lp, res = self.model.log_prob(gen, residual=True)
        self.assertEqual(lp.shape, (4,))
        self.assertTrue(np.all(np.isfinite(lp)))
        self.assertTrue(np.all(res < 1e-12), res)  # samples lie in the geometry
        # Preallocated outputs are filled in place; data have a residual (the noise).
        out, res_out = np.empty(4), np.empty(4)
        got = self.model.log_prob(self.x[:4], out=out, residual=res_out)
        self.assertIs(got[0], out)
        self.assertIs(got[1], res_out)
        self.assertTrue(np.all((res_out > 1e-6) & (res_out < 1e-2)), res_out)
        self.assertTrue(np.array_equal(self.model.log_prob(self.x[:4]), out))
        # Fortran order gives the same values.
        np.testing.assert_allclose(self.model.log_prob(np.asfortranarray(self.x[:4])), out,
                                   rtol=1e-12)

    def test_solver_options(self):
        so = coreflow.sample_options(solver=coreflow.SOLVER_DOPRI5, rtol=1e-6, atol=1e-6)
        ws = self.model.workspace(3, ops=(coreflow.OP_SAMPLE, coreflow.OP_LOG_PROB), options=so)
        gen = self.model.sample(3, seed=2, ws=ws, options=so)
        rk4 = self.model.sample(3, seed=2)
        # The same ODE solved two ways: close (RK4 with 16 steps is not exact).
        self.assertLess(np.linalg.norm(gen - rk4) / np.linalg.norm(rk4), 3e-2)
        self.assertTrue(np.all(np.isfinite(self.model.log_prob(gen, ws=ws, options=so))))
        with self.assertRaises(TypeError):
            coreflow.sample_options(stepz=3)
        bad = coreflow.sample_options(solver=9)
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            self.model.sample(1, options=bad)
        self.assertEqual(cm.exception.status, coreflow.ERR_INVALID_ARGUMENT)
        self.assertIn("solver", cm.exception.message)

    def test_complete_with_mask_or_nan(self):
        truth = planted(count=120, seed=9)[100:103]  # same distribution as the training set
        rng = np.random.default_rng(1)
        mask = rng.random(truth.shape) > 0.3
        with_nan = np.where(mask, truth, np.nan)
        by_mask = self.model.complete(truth, mask=mask)
        by_nan = self.model.complete(with_nan)
        self.assertTrue(np.array_equal(by_mask, by_nan))
        self.assertTrue(np.array_equal(by_mask[mask], truth[mask]))  # observed: bitwise
        err = np.linalg.norm((by_mask - truth)[~mask]) / np.linalg.norm(truth[~mask])
        self.assertLess(err, 1e-2)
        out = np.empty_like(truth, order="F")
        self.assertIs(self.model.complete(with_nan, out=out), out)
        self.assertTrue(np.array_equal(out, by_nan))

    def test_bytes_and_files(self):
        want = self.model.sample(3, seed=6)
        image = self.model.to_bytes()
        self.assertIsInstance(image, bytes)
        for data in (image, bytearray(image), memoryview(image), np.frombuffer(image, np.uint8)):
            with coreflow.Model.from_bytes(data) as copy:
                self.assertTrue(np.array_equal(copy.sample(3, seed=6), want))
                want_info = self.model.info()
                for key, value in copy.info().items():
                    self.assertTrue(same_value(value, want_info[key]), key)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.cfm")
            self.model.save(path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), image)
            with coreflow.Model.load(path) as loaded:
                self.assertTrue(np.array_equal(loaded.sample(3, seed=6), want))
            with self.assertRaises(coreflow.CoreFlowError) as cm:
                coreflow.Model.load(os.path.join(d, "missing.cfm"))
            self.assertEqual(cm.exception.status, coreflow.ERR_IO)
        corrupt = bytearray(image)
        corrupt[len(corrupt) // 2] ^= 0x10
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            coreflow.Model.from_bytes(corrupt)
        self.assertEqual(cm.exception.status, coreflow.ERR_FORMAT)

    def test_geometry_only_model_cannot_sample(self):
        with coreflow.Model.fit(self.x, rank_rows=3, rank_cols=2, flow_steps=0) as geo:
            self.assertEqual(geo.info()["core_model"], coreflow.CORE_MODEL_NONE)
            with self.assertRaises(coreflow.CoreFlowError) as cm:
                geo.sample(1)
            self.assertEqual(cm.exception.status, coreflow.ERR_UNSUPPORTED)


class Threads(unittest.TestCase):
    """One model, many threads: ctypes releases the GIL during each call, so
    the threads sample at the same time, each with its own workspace."""

    def test_eight_threads_sample_bitwise_like_one(self):
        x = planted(count=120, seed=10)
        per_thread, rounds, threads = 4, 3, 8
        with coreflow.Model.fit(x, rank_rows=3, rank_cols=2, **SMALL_FLOW) as model:
            want = model.sample(threads * per_thread, seed=21)
            got = np.full_like(want, np.nan)
            errors = []
            start = threading.Barrier(threads)

            def work(t):
                try:
                    ws = model.workspace(per_thread, ops=(coreflow.OP_SAMPLE,))
                    part = got[t * per_thread:(t + 1) * per_thread]  # a view: filled in place
                    start.wait()
                    for _ in range(rounds):
                        model.sample(out=part, seed=21, first_index=t * per_thread, ws=ws)
                except BaseException as e:
                    errors.append(e)

            pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
            for th in pool:
                th.start()
            for th in pool:
                th.join()
            self.assertEqual(errors, [])
            self.assertTrue(np.array_equal(got, want))


class ThreadAllreduce:
    """An allreduce among `n` threads of this process, standing in for MPI:
    every member's buffer is summed in member order, so all get the same
    result."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=60)
        self.bufs = [None] * n
        self.total = None

    def member(self, rank):
        def allreduce(buf):
            self.bufs[rank] = buf
            self.barrier.wait()
            if rank == 0:
                self.total = np.sum(self.bufs, axis=0)
            self.barrier.wait()
            buf[:] = self.total
            self.barrier.wait()  # nobody starts the next call before all have copied
        return allreduce


class Distributed(unittest.TestCase):
    """Model.fit(allreduce=...): two shards fitted in two threads through a
    summing callback give the single-process geometry."""

    def test_two_shards_give_the_whole_geometry(self):
        x = planted(count=60, seed=11)
        opts = dict(rank_rows=3, rank_cols=2, center=True, flow_steps=0, threads=1)
        comm = ThreadAllreduce(2)
        models, errors = [None, None], []

        def fit(rank):
            try:
                shard = x[rank * 30:(rank + 1) * 30]
                models[rank] = coreflow.Model.fit(shard, allreduce=comm.member(rank), **opts)
            except BaseException as e:
                errors.append(e)

        pool = [threading.Thread(target=fit, args=(r,)) for r in range(2)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        self.assertEqual(errors, [])
        with coreflow.Model.fit(x, **opts) as whole:
            u, v = whole.subspaces()
            for m in models:
                um, vm = m.subspaces()
                np.testing.assert_allclose(um, u, atol=1e-10)
                np.testing.assert_allclose(vm, v, atol=1e-10)
                np.testing.assert_allclose(m.mean(), whole.mean(), atol=1e-12)
                self.assertEqual(m.info()["train_count"], 60)
                m.close()

    def test_a_failing_callback_stops_the_fit(self):
        def broken(buf):
            raise ConnectionError("peer lost")
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            coreflow.Model.fit(planted(seed=12), rank_rows=3, rank_cols=2, flow_steps=0,
                               allreduce=broken)
        self.assertEqual(cm.exception.status, coreflow.ERR_COMMUNICATION)
        self.assertEqual(cm.exception.name, "COREFLOW_ERR_COMMUNICATION")
        self.assertIsInstance(cm.exception.__cause__, ConnectionError)


class LibraryLookup(unittest.TestCase):
    def test_env_var_and_argument_win(self):
        with mock.patch.dict(os.environ, {"COREFLOW_LIB": "/opt/x/libcoreflow.so.0"}):
            self.assertEqual(coreflow.find_library(), "/opt/x/libcoreflow.so.0")
            self.assertEqual(coreflow.find_library("/y/lib.so"), "/y/lib.so")

    def test_default_is_the_bundled_library_else_the_source_tree(self):
        env = {k: v for k, v in os.environ.items() if k != "COREFLOW_LIB"}
        with mock.patch.dict(os.environ, env, clear=True):
            path = coreflow.find_library()
        bundled = coreflow.bundled_library()
        if bundled is not None:  # installed with pip
            self.assertEqual(path, bundled)
            self.assertEqual(os.path.dirname(path), os.path.dirname(coreflow.__file__))
        else:
            package_root = os.path.normpath(
                os.path.join(os.path.dirname(coreflow.__file__), "..", "..", ".."))
            self.assertEqual(path, os.path.join(package_root, "target", "release",
                                                "libcoreflow.so"))

    def test_missing_library_says_how_to_get_it(self):
        env = {k: v for k, v in os.environ.items() if k != "COREFLOW_LIB"}
        with mock.patch.dict(os.environ, env, clear=True), \
                mock.patch.object(coreflow, "_candidates", return_value=iter(())):
            with self.assertRaisesRegex(OSError, "pip install ./bindings/python"):
                coreflow.find_library()

    def test_library_that_cannot_open_says_how_to_get_it(self):
        with mock.patch.object(coreflow, "_lib", None), \
                mock.patch.object(coreflow.ctypes, "CDLL",
                                  side_effect=OSError("libcoreflow.so.0: cannot open")):
            with self.assertRaisesRegex(OSError, r"libcoreflow.so.0: cannot open.*pip install "
                                                 r"./bindings/python.*COREFLOW_LIB"):
                coreflow.load("libcoreflow.so.0")

    def test_version(self):
        self.assertRegex(coreflow.version(), r"^\d+\.\d+\.\d+")


class JuliaCallingPattern(unittest.TestCase):
    """What CoreFlow.jl does, step for step: dlopen the library, declare the
    functions with raw pointer arguments, pass a column-major (m, n, N)
    array by pointer with strides (m*n, 1, m), get column-major (r, s, N)
    cores, decode into a column-major (m, n, N) array."""

    def test_column_major_round_trip(self):
        x = planted(seed=8)
        xj = np.asfortranarray(np.moveaxis(x, 0, -1))  # Array{Float64,3}(m, n, N)
        m, n, N = xj.shape

        lib = ctypes.CDLL(coreflow.find_library())  # Libdl.dlopen
        P = c_void_p
        for name, res, args in [
            ("coreflow_fit_options_init", None, [P]),
            ("coreflow_fit", c_int32, [P, P, P]),
            ("coreflow_model_get_info", c_int32, [P, P]),
            ("coreflow_workspace_size", c_int32, [P, c_int32, c_size_t, P, P]),
            ("coreflow_encode", c_int32, [P, P, P, P, c_size_t]),
            ("coreflow_decode", c_int32, [P, P, P, P, c_size_t]),
            ("coreflow_model_free", None, [P]),
        ]:
            getattr(lib, name).restype = res
            getattr(lib, name).argtypes = args

        buf = (ctypes.c_uint8 * (ctypes.sizeof(coreflow.FitOptions) + 1024))()
        lib.coreflow_fit_options_init(buf)
        opts = coreflow.FitOptions.from_buffer_copy(buf)
        opts.struct_size = ctypes.sizeof(coreflow.FitOptions)
        opts.rank_rows, opts.rank_cols, opts.threads = 3, 2, 1

        # Matrices(pointer(x), C_NULL, N, m, n, s[3], s[1], s[2]) with s = strides(x) = (1, m, m*n)
        view = coreflow.Matrices(xj.ctypes.data, None, N, m, n, m * n, 1, m)
        handle = c_void_p()
        self.assertEqual(lib.coreflow_fit(byref(view), byref(opts), byref(handle)), 0)
        try:
            info = coreflow.ModelInfo()
            info.struct_size = ctypes.sizeof(info)
            self.assertEqual(lib.coreflow_model_get_info(handle, byref(info)), 0)
            r, s = info.rank_rows, info.rank_cols
            ws_bytes = 0
            for op in (coreflow.OP_ENCODE, coreflow.OP_DECODE):
                b = c_size_t()
                self.assertEqual(lib.coreflow_workspace_size(handle, op, N, None, byref(b)), 0)
                ws_bytes = max(ws_bytes, b.value)
            ws = np.empty(ws_bytes, np.uint8)  # Vector{UInt8}(undef, bytes)

            cores = np.empty((r, s, N), order="F")  # Array{Float64,3}(undef, r, s, N)
            self.assertEqual(lib.coreflow_encode(handle, byref(view), cores.ctypes.data,
                                                 ws.ctypes.data, ws_bytes), 0)
            back = np.empty((m, n, N), order="F")
            out = coreflow.MatricesMut(back.ctypes.data, N, m, n, m * n, 1, m)
            self.assertEqual(lib.coreflow_decode(handle, cores.ctypes.data, byref(out),
                                                 ws.ctypes.data, ws_bytes), 0)
        finally:
            lib.coreflow_model_free(handle)  # the finalizer

        # Same results as the C-order path of the Python binding.
        with coreflow.Model.fit(x, rank_rows=3, rank_cols=2, flow_steps=0, threads=1) as ref:
            want_cores = ref.encode(x)
            want_back = ref.decode(want_cores)
        np.testing.assert_allclose(np.moveaxis(cores, -1, 0), want_cores, atol=1e-10)
        np.testing.assert_allclose(np.moveaxis(back, -1, 0), want_back, atol=1e-10)
        self.assertLess(np.linalg.norm(back - xj) / np.linalg.norm(xj), 1e-2)

    def test_sampling_scoring_completion_persistence(self):
        """CoreFlow.jl's sample!, log_prob, complete! and to_bytes/from_bytes:
        column-major (m, n, N) outputs, Vector{Float64} results, a
        Vector{UInt8} image; the results agree with the Python binding on the
        same model."""
        x = planted(count=120, seed=13)
        xj = np.asfortranarray(np.moveaxis(x, 0, -1))
        m, n, N = xj.shape
        lib = ctypes.CDLL(coreflow.find_library())
        P = c_void_p
        for name, res, args in [
            ("coreflow_fit_options_init", None, [P]),
            ("coreflow_sample_options_init", None, [P]),
            ("coreflow_fit", c_int32, [P, P, P]),
            ("coreflow_workspace_size", c_int32, [P, c_int32, c_size_t, P, P]),
            ("coreflow_sample", c_int32, [P, P, ctypes.c_uint64, ctypes.c_uint64, P, P, c_size_t]),
            ("coreflow_log_prob", c_int32, [P, P, P, P, P, P, c_size_t]),
            ("coreflow_complete", c_int32, [P, P, P, P, c_size_t]),
            ("coreflow_model_to_bytes", c_int32, [P, P, c_size_t, P]),
            ("coreflow_model_from_bytes", c_int32, [P, c_size_t, P]),
            ("coreflow_model_free", None, [P]),
        ]:
            getattr(lib, name).restype = res
            getattr(lib, name).argtypes = args

        # fit_options(; flow_steps = 200, ...) with the spare-room init
        buf = (ctypes.c_uint8 * (ctypes.sizeof(coreflow.FitOptions) + 1024))()
        lib.coreflow_fit_options_init(buf)
        opts = coreflow.FitOptions.from_buffer_copy(buf)
        opts.struct_size = ctypes.sizeof(coreflow.FitOptions)
        opts.rank_rows, opts.rank_cols, opts.center = 3, 2, 1
        for name, value in SMALL_FLOW.items():
            setattr(opts, name, value)
        view = coreflow.Matrices(xj.ctypes.data, None, N, m, n, m * n, 1, m)
        handle = c_void_p()
        self.assertEqual(lib.coreflow_fit(byref(view), byref(opts), byref(handle)), 0)
        model = coreflow.Model(handle.value)  # the Python binding on the same handle
        with model:
            def ws_for(op, count):
                b = c_size_t()
                self.assertEqual(lib.coreflow_workspace_size(handle, op, count, None, byref(b)), 0)
                return np.empty(max(b.value, 1), np.uint8)

            # sample!(out, model, ws; seed = 5, first_index = 0)
            k = 4
            gen = np.empty((m, n, k), order="F")
            out = coreflow.MatricesMut(gen.ctypes.data, k, m, n, m * n, 1, m)
            ws = ws_for(coreflow.OP_SAMPLE, k)
            self.assertEqual(lib.coreflow_sample(handle, None, 5, 0, byref(out), ws.ctypes.data,
                                                 ws.size), 0)
            self.assertTrue(np.array_equal(np.moveaxis(gen, -1, 0), model.sample(k, seed=5)))

            # log_prob(model, x, ws) -> (Vector{Float64}, Vector{Float64})
            lp, res = np.empty(k), np.empty(k)
            genv = coreflow.Matrices(gen.ctypes.data, None, k, m, n, m * n, 1, m)
            ws = ws_for(coreflow.OP_LOG_PROB, k)
            self.assertEqual(lib.coreflow_log_prob(handle, None, byref(genv), lp.ctypes.data,
                                                   res.ctypes.data, ws.ctypes.data, ws.size), 0)
            want_lp, want_res = model.log_prob(np.moveaxis(gen, -1, 0), residual=True)
            np.testing.assert_allclose(lp, want_lp, rtol=1e-12)
            self.assertTrue(np.all(res < 1e-12))

            # complete!(out, model, x, mask, ws): a Vector{UInt8} mask, column-major
            part = xj[:, :, :2]
            mask = np.asfortranarray(np.random.default_rng(2).random(part.shape) > 0.3).astype(np.uint8)
            pv = coreflow.Matrices(part.ctypes.data, mask.ctypes.data, 2, m, n, m * n, 1, m)
            filled = np.empty((m, n, 2), order="F")
            fv = coreflow.MatricesMut(filled.ctypes.data, 2, m, n, m * n, 1, m)
            ws = ws_for(coreflow.OP_COMPLETE, 2)
            self.assertEqual(lib.coreflow_complete(handle, byref(pv), byref(fv), ws.ctypes.data,
                                                   ws.size), 0)
            self.assertTrue(np.array_equal(
                np.moveaxis(filled, -1, 0),
                model.complete(np.moveaxis(part, -1, 0), mask=np.moveaxis(mask, -1, 0))))

            # to_bytes(model) -> Vector{UInt8}; from_bytes(bytes) -> Model
            length = c_size_t()
            self.assertEqual(lib.coreflow_model_to_bytes(handle, None, 0, byref(length)), 0)
            image = np.empty(length.value, np.uint8)
            self.assertEqual(lib.coreflow_model_to_bytes(handle, image.ctypes.data, image.size,
                                                         byref(length)), 0)
            self.assertEqual(image.tobytes(), model.to_bytes())
            copy = c_void_p()
            self.assertEqual(lib.coreflow_model_from_bytes(image.ctypes.data, image.size,
                                                           byref(copy)), 0)
            again = np.empty((m, n, k), order="F")
            out = coreflow.MatricesMut(again.ctypes.data, k, m, n, m * n, 1, m)
            ws = ws_for(coreflow.OP_SAMPLE, k)
            self.assertEqual(lib.coreflow_sample(copy, None, 5, 0, byref(out), ws.ctypes.data,
                                                 ws.size), 0)
            lib.coreflow_model_free(copy)
            self.assertTrue(np.array_equal(again, gen))


# --- Struct mirrors against the header -------------------------------------

_C_TYPES = {
    "size_t": ctypes.c_size_t, "ptrdiff_t": ctypes.c_ssize_t, "double": ctypes.c_double,
    "uint8_t": ctypes.c_uint8, "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64,
    "int32_t": ctypes.c_int32,
}
_JULIA_TYPES = {
    "Csize_t": ctypes.c_size_t, "Cptrdiff_t": ctypes.c_ssize_t, "Float64": ctypes.c_double,
    "UInt8": ctypes.c_uint8, "UInt32": ctypes.c_uint32, "UInt64": ctypes.c_uint64,
    "Int32": ctypes.c_int32, "Int64": ctypes.c_int64, "Cint": ctypes.c_int,
}
# C struct -> name of the mirror in coreflow.py and in CoreFlow.jl
_MIRRORS = {
    "coreflow_matrices": "Matrices", "coreflow_matrices_mut": "MatricesMut",
    "coreflow_progress": "Progress", "coreflow_fit_options": "FitOptions",
    "coreflow_sample_options": "SampleOptions", "coreflow_model_info": "ModelInfo",
    "coreflow_metrics_options": "MetricsOptions", "coreflow_metrics_result": "MetricsResult",
}


def _layout(fields):
    """[(name, offset, size)] of a C struct with these (name, ctype) fields."""
    cls = type("S", (ctypes.Structure,), {"_fields_": fields})
    return [(n, getattr(cls, n).offset, getattr(cls, n).size) for n, _ in fields] + \
           [("sizeof", ctypes.sizeof(cls), 0)]


def header_structs():
    with open(os.path.join(ROOT, "include", "coreflow.h")) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    aliases = dict((b, a) for a, b in re.findall(r"typedef\s+(\w+)\s+(\w+);", text))
    structs = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            ctype, field = re.match(r"(.*?)(\w+)$", decl).groups()
            ctype = ctype.replace("const", "").replace("struct", "").strip()
            if "*" in ctype or ctype.endswith("_fn"):
                t = ctypes.c_void_p
            else:
                t = _C_TYPES[aliases.get(ctype, ctype)]
            fields.append((field, t))
        structs[name] = fields
    return structs


def julia_structs():
    with open(os.path.join(ROOT, "bindings", "julia", "CoreFlow.jl")) as f:
        text = f.read()
    structs = {}
    for name, body in re.findall(r"^struct (\w+)\n(.*?)^end", text, flags=re.S | re.M):
        if name in _MIRRORS.values():
            fields = re.findall(r"^\s+(\w+)::(\S+)\s*$", body, flags=re.M)
            structs[name] = [(f, ctypes.c_void_p if t.startswith("Ptr{") else _JULIA_TYPES[t])
                             for f, t in fields]
    return structs


def fields_of(struct):
    """The field values of a ctypes struct (callbacks as addresses; the
    padding between fields is not compared)."""
    def value(v):
        return ctypes.cast(v, c_void_p).value if isinstance(v, ctypes._CFuncPtr) else v
    return {name: value(getattr(struct, name)) for name, _ in struct._fields_}


class StructMirrors(unittest.TestCase):
    def test_python_and_julia_match_the_header(self):
        header = header_structs()
        julia = julia_structs()
        self.assertEqual(set(_MIRRORS), set(header), "a struct of the header has no mirror")
        for cname, mirror in _MIRRORS.items():
            want = _layout(header[cname])
            py = getattr(coreflow, mirror)
            py_fields = [(n, ctypes.c_void_p if n in ("progress",) else t) for n, t in py._fields_]
            self.assertEqual(_layout(py_fields), want, f"coreflow.py {mirror} vs {cname}")
            self.assertEqual(_layout(julia[mirror]), want, f"CoreFlow.jl {mirror} vs {cname}")

    def test_sized_init_and_spare_room_agree(self):
        """fit_options() uses the sized init; a library without it (older
        builds of ABI v1) gets the spare-room path, with the same result."""
        sized = coreflow.fit_options(rank_rows=3)
        self.assertEqual(sized.struct_size, ctypes.sizeof(coreflow.FitOptions))
        lib = coreflow.load()
        older = type("OlderLibrary", (), {
            "coreflow_fit_options_init": staticmethod(lib.coreflow_fit_options_init),
            "coreflow_sample_options_init": staticmethod(lib.coreflow_sample_options_init),
        })()
        with mock.patch.object(coreflow, "load", return_value=older):
            spare = coreflow.fit_options(rank_rows=3)
            sample = coreflow.sample_options(steps=8)
        self.assertEqual(fields_of(spare), fields_of(sized))
        self.assertEqual(fields_of(sample), fields_of(coreflow.sample_options(steps=8)))

    def test_library_agrees_on_option_sizes(self):
        lib = coreflow.load()
        buf = (ctypes.c_uint8 * 4096)()
        lib.coreflow_fit_options_init(buf)
        self.assertEqual(c_size_t.from_buffer(buf).value, ctypes.sizeof(coreflow.FitOptions))
        lib.coreflow_sample_options_init(buf)
        self.assertEqual(c_size_t.from_buffer(buf).value, ctypes.sizeof(coreflow.SampleOptions))
        self.assertEqual(c_uint32(lib.coreflow_abi_version()).value, coreflow.ABI_VERSION)


# --- Constants and function signatures against the header --------------------

def _header_text():
    with open(os.path.join(ROOT, "include", "coreflow.h")) as f:
        return re.sub(r"/\*.*?\*/|//[^\n]*", "", f.read(), flags=re.S)


def header_constants():
    """{NAME: value} of the header's integer #defines, COREFLOW_ prefix dropped."""
    return {name: int(value) for name, value in
            re.findall(r"^#define COREFLOW_(\w+) (-?\d+)\s*$", _header_text(), flags=re.M)}


def _c_type(decl, aliases):
    """('ptr', pointee) or ('val', base type) of a C parameter or return type."""
    decl = decl.replace("const", " ").replace("struct", " ")
    stars = decl.count("*")
    base = decl.replace("*", " ").split()
    base = base[0] if base else "void"
    while base in aliases:
        base = aliases[base]
    return ("ptr", stars, base) if stars else ("val", 0, base)


def header_functions():
    """{name: (return type, [parameter types])} of the header's prototypes."""
    text = _header_text()
    aliases = dict((b, a) for a, b in re.findall(r"typedef\s+(\w+)\s+(\w+);", text))
    functions = {}
    for ret, name, params in re.findall(r"^([A-Za-z_][\w \*]*?)\s*\b(coreflow_\w+)\(([^;]*?)\);",
                                        text, flags=re.M | re.S):
        args = []
        for p in filter(None, (p.strip() for p in params.split(","))):
            if p == "void":
                continue
            args.append(_c_type(re.sub(r"\w+$", "", p), aliases))
        functions[name] = (_c_type(ret, aliases), args)
    return functions


# Julia scalar types and the C types they are passed as.
_JULIA_SCALARS = {"Int32": "int32_t", "UInt32": "uint32_t", "UInt64": "uint64_t",
                  "Csize_t": "size_t", "Cvoid": "void", "Float64": "double", "UInt8": "uint8_t"}


def _julia_matches(jtype, ctype):
    kind, stars, base = ctype
    if jtype == "Cstring":
        return kind == "ptr" and stars == 1 and base == "char"
    if jtype.startswith("Ptr{") and jtype.endswith("}"):
        if kind != "ptr":
            return False
        inner = jtype[4:-1]
        if inner == "Cvoid" or (stars == 1 and base == "void"):
            return True  # an opaque or untyped pointer
        if stars > 1:
            return _julia_matches(inner, ("ptr", stars - 1, base) if stars > 2 else
                                  ("ptr", 1, base))
        mirror = {v: k for k, v in _MIRRORS.items()}.get(inner)
        if mirror is not None:
            return base == mirror
        return _JULIA_SCALARS.get(inner) == base
    return kind == "val" and _JULIA_SCALARS.get(jtype) == base


def julia_calls():
    """[(function, return type, [argument types])] of every ccall of
    CoreFlow.jl that names its function literally."""
    with open(os.path.join(ROOT, "bindings", "julia", "CoreFlow.jl")) as f:
        text = f.read()
    calls = []
    pattern = (r"ccall\(\s*(?:_sym\(|Libdl\.dlsym\(\w+,\s*):(coreflow_\w+)\),\s*"
               r"([\w{}]+),\s*\(([^()]*)\)")
    for name, ret, args in re.findall(pattern, text):
        calls.append((name, ret, [a.strip() for a in args.split(",") if a.strip()]))
    # The option initialisers are called through a symbol held in a variable.
    for name in re.findall(r":(coreflow_\w+_init)\b", text):
        calls.append((name, "Cvoid", ["Ptr{Cvoid}"]))
    return calls


class HeaderSignatures(unittest.TestCase):
    """The constants and the function signatures of both bindings against
    include/coreflow.h (the struct layouts are checked by StructMirrors)."""

    def test_julia_constants(self):
        header = header_constants()
        with open(os.path.join(ROOT, "bindings", "julia", "CoreFlow.jl")) as f:
            julia = {n: int(v) for n, v in re.findall(
                r"^const (\w+) = (?:U?Int32\()?(-?\d+)\)?", f.read(), flags=re.M)}
        julia_only = {"CORE_MODEL_NONE"}  # a value of coreflow_model_info.core_model
        for name, value in julia.items():
            if name in julia_only:
                continue
            self.assertIn(name, header, f"CoreFlow.jl: {name} is not in the header")
            self.assertEqual(value, header[name], f"CoreFlow.jl: {name}")
        missing = set(header) - set(julia)
        self.assertEqual(missing, set(), "constants of the header missing from CoreFlow.jl")

    def test_python_constants(self):
        for name, value in header_constants().items():
            self.assertEqual(getattr(coreflow, name, None), value, f"coreflow.{name}")

    def test_julia_ccall_signatures(self):
        header = header_functions()
        calls = julia_calls()
        self.assertGreater(len(calls), 15)
        for name, ret, args in calls:
            self.assertIn(name, header, f"CoreFlow.jl calls {name}, which the header lacks")
            cret, cargs = header[name]
            self.assertTrue(_julia_matches(ret, cret), f"{name}: returns {ret}, header {cret}")
            self.assertEqual(len(args), len(cargs), f"{name}: {len(args)} arguments, header "
                                                    f"{len(cargs)}")
            for k, (j, c) in enumerate(zip(args, cargs)):
                self.assertTrue(_julia_matches(j, c), f"{name}: argument {k + 1} is {j}, "
                                                      f"header {c}")
        used = {name for name, _, _ in calls}
        for name in ("coreflow_fit", "coreflow_sample", "coreflow_log_prob", "coreflow_complete",
                     "coreflow_encode", "coreflow_decode", "coreflow_model_get_info"):
            self.assertIn(name, used)

    def test_the_checker_sees_a_wrong_signature(self):
        header = header_functions()
        cret, cargs = header["coreflow_sample"]
        self.assertFalse(_julia_matches("UInt32", cargs[2]))          # seed is uint64_t
        self.assertFalse(_julia_matches("Ptr{Matrices}", cargs[4]))   # out is matrices_mut
        self.assertTrue(_julia_matches("Ptr{MatricesMut}", cargs[4]))
        self.assertFalse(_julia_matches("Cvoid", cret))

    def test_python_prototypes(self):
        header = header_functions()
        # (c_size_t and c_uint64 are one type where both are 64-bit.)
        scalars = {"int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
                   "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t}
        protos = dict(coreflow._PROTOTYPES, **coreflow._OPTIONAL_PROTOTYPES)
        for name, (ret, args) in protos.items():
            self.assertIn(name, header, name)
            cret, cargs = header[name]
            self.assertEqual(len(args), len(cargs), name)
            for t, c in [(ret, cret)] + list(zip(args, cargs)):
                if t is None:
                    self.assertEqual(c, ("val", 0, "void"), name)
                elif t in (ctypes.c_void_p, ctypes.c_char_p):
                    self.assertEqual(c[0], "ptr", name)
                else:
                    self.assertEqual(c[0], "val", name)
                    self.assertIs(t, scalars[c[2]], name)


if __name__ == "__main__":
    unittest.main()
