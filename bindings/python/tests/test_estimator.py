"""Tests of the scikit-learn style interface (coreflow.CoreFlow,
coreflow.metrics) and of the input conversions, through the package as
installed (`pip install ./bindings/python`), run from outside the source tree
by scripts/test.sh.

Run: python -m unittest discover -s bindings/python/tests -v
(with the package installed, or PYTHONPATH=bindings/python after
`cargo build --release`).
"""

import copy
import gc
import os
import pickle
import tempfile
import unittest
import warnings

import numpy as np

import synthetic

import coreflow

# Small flows: the tests check the interface, not the quality of the model.
SMALL = dict(flow_steps=150, flow_hidden=16, flow_layers=2, batch_size=32, threads=1)


def planted(count=60, rows=12, cols=10, r=3, s=2, noise=1e-2, seed=3):
    """count matrices U C_i V^T + noise, C-order (count, rows, cols)."""
    return synthetic.planted(count, rows, cols, r, s, noise, seed)


class Estimator(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.x = planted()
        cls.est = coreflow.CoreFlow(rank=(4, 4), center=True, **SMALL).fit(cls.x.astype(np.float32))

    def test_fit_returns_self_with_fitted_attributes(self):
        est = coreflow.CoreFlow(rank=(3, 2), flow_steps=0, threads=1)
        self.assertIs(est.fit(self.x), est)
        self.assertEqual(est.ranks_, (3, 2))
        self.assertEqual(est.U_.shape, (12, 3))
        self.assertEqual(est.V_.shape, (10, 2))
        np.testing.assert_allclose(est.U_.T @ est.U_, np.eye(3), atol=1e-12)
        self.assertIsNone(est.mean_)
        self.assertEqual(est.shape_, (12, 10))
        self.assertEqual(est.n_samples_fit_, 60)
        self.assertEqual(est.info_["core_model"], "none")
        self.assertEqual(est.info_["masked"], 0)  # complete data take the complete-data fit
        self.assertGreater(est.info_["explained_energy"], 0.99)
        self.assertEqual(self.est.mean_.shape, (12, 10))
        self.assertIn(self.est.info_["core_model"], ("flow", "gaussian"))

    def test_float32_list_and_strided_inputs_give_one_model(self):
        """Every array-like is converted once: the same numbers give the
        same bases whatever the container or the layout."""
        kw = dict(rank=(3, 2), flow_steps=0, threads=1)
        x32 = self.x.astype(np.float32)
        want = coreflow.CoreFlow(**kw).fit(x32.astype(np.float64)).U_
        big = np.zeros((120, 12, 20), dtype=np.float32)
        big[::2, :, ::2] = x32                                 # non-contiguous float32
        for data in (x32, x32.tolist(), big[::2, :, ::2], np.asfortranarray(x32),
                     x32.astype(">f8")):                        # non-native byte order
            got = coreflow.CoreFlow(**kw).fit(data).U_
            np.testing.assert_allclose(got, want, atol=1e-12)

    def test_sample_is_reproducible_and_survives_pickle(self):
        a = self.est.sample(10, random_state=1)
        self.assertEqual(a.shape, (10, 12, 10))
        self.assertTrue(np.array_equal(a, self.est.sample(10, random_state=1)))
        self.assertFalse(np.array_equal(a, self.est.sample(10, random_state=2)))
        again = pickle.loads(pickle.dumps(self.est))
        self.assertTrue(np.array_equal(again.sample(10, random_state=1), a))
        self.assertEqual(again.get_params(), self.est.get_params())
        np.testing.assert_array_equal(again.U_, self.est.U_)
        clone = copy.deepcopy(self.est)
        self.assertIsNot(clone.model_, self.est.model_)
        self.assertTrue(np.array_equal(clone.sample(10, random_state=1), a))
        # Sample j of a stream does not depend on how many are drawn.
        self.assertTrue(np.array_equal(self.est.sample(3, random_state=1), a[:3]))
        # A numpy Generator gives a seed; None a fresh one.
        g1 = self.est.sample(2, random_state=np.random.default_rng(5))
        g2 = self.est.sample(2, random_state=np.random.default_rng(5))
        self.assertTrue(np.array_equal(g1, g2))
        self.assertEqual(self.est.sample(2).shape, (2, 12, 10))

    def test_unfitted_pickle_and_params(self):
        est = coreflow.CoreFlow(rank=5, core_model="gaussian")
        again = pickle.loads(pickle.dumps(est))
        self.assertEqual(again.get_params(), est.get_params())
        self.assertFalse(hasattr(again, "model_"))
        with self.assertRaisesRegex(ValueError, "not fitted"):
            again.sample(2)

    def test_score_samples_and_residual(self):
        ll = self.est.score_samples(self.x[:8])
        self.assertEqual(ll.shape, (8,))
        self.assertTrue(np.all(np.isfinite(ll)))
        self.assertAlmostEqual(self.est.score(self.x[:8]), float(np.mean(ll)))
        res = self.est.residual(self.x[:8])
        self.assertTrue(np.all((res >= 0) & (res < 0.05)))   # planted rank 3 x 2, noise 1e-2
        far = self.x[:8] + np.random.default_rng(1).standard_normal((8, 12, 10))
        self.assertTrue(np.all(self.est.residual(far) > res))
        # A matrix off the data scores lower than the data.
        self.assertLess(np.mean(self.est.score_samples(far)), np.mean(ll))

    def test_residual_of_a_geometry_only_model(self):
        est = coreflow.CoreFlow(rank=(3, 2), center=True, flow_steps=0, threads=1).fit(self.x)
        res = est.residual(self.x[:4])
        y = self.x[:4] - est.mean_
        proj = np.einsum("ia,ja,njk,kb,lb->nil", est.U_, est.U_, y, est.V_, est.V_)
        want = np.linalg.norm((y - proj).reshape(4, -1), axis=1) / np.linalg.norm(
            y.reshape(4, -1), axis=1)
        np.testing.assert_allclose(res, want, rtol=1e-8)

    def test_transform_and_inverse_transform(self):
        cores = self.est.transform(self.x[:5])
        self.assertEqual(cores.shape, (5, 4, 4))
        want = np.einsum("ia,nij,jb->nab", self.est.U_, self.x[:5] - self.est.mean_, self.est.V_)
        np.testing.assert_allclose(cores, want, atol=1e-10)
        back = self.est.inverse_transform(cores.tolist())
        np.testing.assert_allclose(back, np.einsum("ia,nab,jb->nij", self.est.U_, want,
                                                   self.est.V_) + self.est.mean_, atol=1e-10)
        with self.assertRaisesRegex(ValueError, r"C: cores of shape \(N, 4, 4\)"):
            self.est.inverse_transform(np.zeros((2, 3, 4)))

    def test_complete_with_nan_or_mask(self):
        y = self.x[:3].copy()
        missing = np.zeros(y.shape, dtype=bool)
        missing[:, ::3, ::2] = True
        with_nan = y.copy()
        with_nan[missing] = np.nan
        filled = self.est.complete(with_nan)
        self.assertFalse(np.isnan(filled).any())
        np.testing.assert_array_equal(filled[~missing], y[~missing])
        self.assertLess(np.abs(filled[missing] - y[missing]).max(), 0.2)
        by_mask = self.est.complete(np.where(missing, 0.0, y).tolist(), mask=~missing)
        np.testing.assert_allclose(by_mask, filled, atol=1e-12)

    def test_fit_with_missing_entries(self):
        y = self.x.copy()
        y[:, 0, 0] = np.nan
        est = coreflow.CoreFlow(rank=(3, 2), flow_steps=0, threads=1).fit(y)
        self.assertEqual(est.info_["masked"], 1)
        mask = np.ones(y.shape, dtype=np.uint8)
        mask[:, 0, 0] = 0
        est2 = coreflow.CoreFlow(rank=(3, 2), flow_steps=0, threads=1).fit(
            np.nan_to_num(y), mask)
        np.testing.assert_allclose(np.abs(est2.U_), np.abs(est.U_), atol=1e-8)

    def test_gaussian_core_model(self):
        est = coreflow.CoreFlow(rank=(3, 2), core_model="gaussian", flow_steps=0,
                                threads=1).fit(self.x.tolist())
        self.assertEqual(est.info_["core_model"], "gaussian")
        self.assertEqual(est.sample(4, random_state=0).shape, (4, 12, 10))
        self.assertTrue(np.all(np.isfinite(est.score_samples(self.x[:4]))))

    def test_save_and_load(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.cfm")
            self.est.save(path)
            loaded = coreflow.CoreFlow.load(path)
        self.assertTrue(np.array_equal(loaded.sample(3, random_state=4),
                                       self.est.sample(3, random_state=4)))

    def test_small_data_warns(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coreflow.CoreFlow(rank=(6, 5), flow_steps=0, threads=1).fit(self.x[:20])
        msgs = [str(w.message) for w in caught if issubclass(w.category, coreflow.CoreFlowWarning)]
        self.assertEqual(len(msgs), 1, msgs)
        self.assertIn("30 dimensions", msgs[0])
        self.assertIn("20 training matrices", msgs[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coreflow.CoreFlow(rank=(3, 2), flow_steps=0, threads=1).fit(self.x[:20])
        self.assertEqual([w for w in caught if issubclass(w.category, coreflow.CoreFlowWarning)], [])


class SmallData(unittest.TestCase):
    """Ranks chosen by energy for a few dozen matrices: the core stays
    within half the number of matrices, and the energy shortfall is named."""

    def test_energy_ranks_are_capped_and_the_shortfall_explained(self):
        x = np.random.default_rng(4).standard_normal((28, 28, 24))  # no low-rank structure
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = coreflow.CoreFlow(energy=0.99, flow_steps=0, threads=1).fit(x)
        r, s = est.ranks_
        self.assertLessEqual(r * s, 14)
        self.assertLess(est.info_["explained_energy"], 0.99)
        msgs = [str(w.message) for w in caught if issubclass(w.category, coreflow.CoreFlowWarning)]
        self.assertEqual(len(msgs), 1, msgs)
        self.assertIn("below the requested 0.99", msgs[0])
        self.assertIn("at most 14 dimensions (half the 28 training matrices)", msgs[0])

    def test_energy_is_met_when_the_data_allow(self):
        """Planted rank 3 x 2 plus noise: the ranks chosen keep the energy."""
        x = planted(count=60, rows=12, cols=10, noise=0.05, seed=8)
        for energy in (0.9, 0.99):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                est = coreflow.CoreFlow(energy=energy, flow_steps=0, threads=1).fit(x)
            self.assertGreaterEqual(est.info_["explained_energy"], energy)
            self.assertLessEqual(est.ranks_[0] * est.ranks_[1], 30)
            self.assertEqual([w for w in caught
                              if issubclass(w.category, coreflow.CoreFlowWarning)], [])


class Parameters(unittest.TestCase):
    def test_defaults_are_the_librarys(self):
        est = coreflow.CoreFlow()
        lib = coreflow.fit_options()
        for name in coreflow.estimator._FIT_FIELDS:
            value = getattr(est, name)
            if name in coreflow.ENUMS:
                value = coreflow.ENUMS[name][value]
            self.assertEqual(value, getattr(lib, name), name)
        self.assertIsNone(est.rank)
        self.assertEqual((lib.rank_rows, lib.rank_cols), (0, 0))
        self.assertEqual(est.random_state, lib.seed)
        so = coreflow.sample_options()
        self.assertEqual(coreflow.ENUMS["solver"][est.solver], so.solver)
        for name in ("steps", "rtol", "atol"):
            self.assertEqual(getattr(est, name), getattr(so, name), name)

    def test_every_enum_value_is_a_library_constant(self):
        for option, table in coreflow.ENUMS.items():
            prefix = {"core_model": "CORE_MODEL_", "subspace_method": "SUBSPACE_METHOD_",
                      "coupling": "COUPLING_", "solver": "SOLVER_"}[option]
            for name, value in table.items():
                self.assertEqual(getattr(coreflow, prefix + name.upper()), value, name)

    def test_get_and_set_params(self):
        est = coreflow.CoreFlow(rank=(2, 3), core_model="flow")
        params = est.get_params()
        self.assertEqual(params["rank"], (2, 3))
        self.assertEqual(params["core_model"], "flow")
        self.assertIs(est.set_params(energy=0.9, solver="dopri5"), est)
        self.assertEqual((est.energy, est.solver), (0.9, "dopri5"))
        again = coreflow.CoreFlow(**est.get_params())
        self.assertEqual(again.get_params(), est.get_params())
        self.assertEqual(repr(coreflow.CoreFlow(rank=4)), "CoreFlow(rank=4)")
        with self.assertRaisesRegex(ValueError, "'bogus'.*valid parameters are:.*core_model"):
            est.set_params(bogus=1)

    def test_bad_options_name_the_option_and_the_allowed_values(self):
        x = planted(count=10)
        cases = [
            (dict(core_model="gausian"), r"core_model: 'gausian' is not one of 'auto', 'flow', "
                                         r"'gaussian'"),
            (dict(subspace_method="svd"), r"subspace_method: 'svd' is not one of 'hooi', "
                                          r"'riemannian'"),
            (dict(coupling=1), r"coupling: 1 is not one of 'independent', 'minibatch_ot'"),
            (dict(rank=(0, 3)), r"rank: None \(chosen by energy\), a positive int or a pair"),
            (dict(rank="4x4"), r"rank:"),
            (dict(random_state=-1), r"random_state: an integer"),
        ]
        for params, pattern in cases:
            with self.subTest(params=params), self.assertRaisesRegex(ValueError, pattern):
                coreflow.CoreFlow(flow_steps=0, **params).fit(x)
        with self.assertRaisesRegex(ValueError, r"solver: 'rk5' is not one of 'euler', 'heun', "
                                                r"'rk4', 'dopri5'"):
            coreflow.CoreFlow(rank=2, core_model="gaussian", flow_steps=0, solver="rk5").fit(
                x).sample(2)
        with self.assertRaisesRegex(TypeError, "'flow_steps'"):
            coreflow.CoreFlow(flow_steps=10.5).fit(x)
        # Numbers out of range are named by the library.
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            coreflow.CoreFlow(energy=1.5, flow_steps=0).fit(x)
        self.assertIn("energy", cm.exception.message)

    def test_bad_inputs_name_the_argument(self):
        est = coreflow.CoreFlow(rank=2, core_model="gaussian", flow_steps=0, threads=1).fit(
            planted(count=10))
        with self.assertRaisesRegex(ValueError, r"X: a batch of matrices of shape \(N, m, n\)"):
            est.fit(np.zeros((12, 10)))
        with self.assertRaisesRegex(TypeError, "X: numbers expected"):
            est.fit(np.array([[["a"]]]))
        with self.assertRaisesRegex(ValueError, "X: matrices of 12 x 10 expected"):
            est.score_samples(np.zeros((2, 12, 9)))
        with self.assertRaisesRegex(ValueError, "mask: shape"):
            est.complete(np.zeros((2, 12, 10)), mask=np.ones((2, 12, 9)))
        with self.assertRaisesRegex(ValueError, "n_samples: a positive integer"):
            est.sample(0)
        with self.assertRaisesRegex(ValueError, "random_state"):
            est.sample(2, random_state="seven")


class Metrics(unittest.TestCase):
    def test_metrics_is_a_dict_of_every_result_field(self):
        x = planted(count=30, seed=1)
        y = planted(count=20, seed=2)
        got = coreflow.metrics(x, y.astype(np.float32).tolist())
        fields = [n for n, _ in coreflow.MetricsResult._fields_ if n != "struct_size"]
        self.assertEqual(list(got), fields)
        for name in ("sve", "topk_w1", "mmd2", "mean_error", "rowcov_error", "colcov_error"):
            self.assertIn(name, got)
            self.assertTrue(np.isfinite(got[name]), name)
        same = coreflow.metrics(x, x)
        self.assertEqual(same["sve"], 0.0)
        self.assertLess(same["mean_error"], 1e-12)
        far = coreflow.metrics(x, x + 3.0)
        self.assertGreater(far["mean_error"], same["mean_error"])
        self.assertGreater(far["mmd2"], same["mmd2"])
        self.assertEqual(far["nn_accuracy"], 1.0)
        self.assertTrue(np.isnan(got["dcr_ratio"]))

    def test_closest_record_ratio_needs_the_training_set(self):
        train = planted(count=30, seed=1)
        test = planted(count=20, seed=2)
        # Copies of the training set are at distance 0 from it.
        copies = coreflow.metrics(test, train[:20], train=train)
        self.assertLess(copies["dcr_ratio"], 1e-6)
        fresh = coreflow.metrics(test, planted(count=20, seed=3), train=train.tolist())
        self.assertGreater(fresh["dcr_ratio"], 0.5)
        with self.assertRaisesRegex(ValueError, "train"):
            coreflow.metrics(test, test, train=train[0])

    def test_metrics_errors_name_the_argument(self):
        x = planted(count=10)
        with self.assertRaisesRegex(ValueError, "generated: a batch of matrices"):
            coreflow.metrics(x, x[0])
        with self.assertRaisesRegex(ValueError, "top_k"):
            coreflow.metrics(x, x, top_k=0)
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            coreflow.metrics(x, x[:1])
        self.assertIn("generated", cm.exception.message)


class ConvertedInputsStayAlive(unittest.TestCase):
    """A list converted inside matrices_view used to be freed before the C
    call read it (the view kept only its address)."""

    def test_view_of_a_list_keeps_its_array(self):
        x = planted(count=4, rows=8, cols=6)
        view = coreflow.matrices_view(x.tolist())
        gc.collect()
        # Reuse freed memory of the same size, as the allocator would.
        decoys = [np.full(x.shape, -7.0) for _ in range(8)]
        seen = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_double * x.size).from_address(
            view.data)).reshape(x.shape)
        np.testing.assert_array_equal(seen, x)
        self.assertEqual(view.arrays[0].ctypes.data, view.data)
        del decoys

    def test_model_fit_of_a_list_equals_fit_of_the_array(self):
        x = planted(count=40, rows=20, cols=16, seed=9)
        kw = dict(rank_rows=3, rank_cols=2, flow_steps=0, threads=1)
        want = coreflow.Model.fit(x, **kw).subspaces()
        for _ in range(3):
            got = coreflow.Model.fit(x.tolist(), **kw).subspaces()
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        # The mask converted from a list lives through the call too.
        mask = np.ones(x.shape, dtype=bool)
        mask[:, 0, 0] = False
        got = coreflow.Model.fit(x.tolist(), mask=mask.tolist(), **kw).subspaces()
        ref = coreflow.Model.fit(x, mask=mask, **kw).subspaces()
        np.testing.assert_array_equal(got[0], ref[0])


def elf_section_names(image):
    """Section names of a 64-bit little-endian ELF image."""
    import struct

    shoff, = struct.unpack_from("<Q", image, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", image, 0x3A)

    def header(i):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", image, shoff + i * entsize)
        return name, offset, size

    _, names_at, names_len = header(names_index)
    table = image[names_at:names_at + names_len]
    return [table[n:table.index(b"\0", n)].decode() for n, _, _ in map(header, range(count))]


class Installed(unittest.TestCase):
    def test_package_carries_its_library(self):
        """Installed with pip, the package loads the library it carries
        (set COREFLOW_TEST_INSTALLED=1 to require it)."""
        bundled = coreflow.bundled_library()
        if os.environ.get("COREFLOW_TEST_INSTALLED") == "1":
            self.assertIsNotNone(bundled, "the installed package has no library")
            self.assertEqual(os.path.realpath(coreflow.load()._name), os.path.realpath(bundled))
            # Shipped stripped: no debug sections (the release build carries
            # them for profiling: 25 MB, against 5.3 MB stripped).
            with open(bundled, "rb") as f:
                image = f.read()
            # 64-bit little-endian ELF (EI_CLASS 2, EI_DATA 1): the layout read below.
            if image[:6] == b"\x7fELF\x02\x01":
                sections = elf_section_names(image)
                self.assertIn(".text", sections)
                self.assertEqual([s for s in sections if s.startswith(".debug")], [])
            self.assertLess(len(image), 10 * 1024 * 1024)
            from importlib import metadata
            self.assertEqual(metadata.version("coreflow-matrix"), coreflow.version())
        if bundled is None:
            self.skipTest("running from the source tree")


if __name__ == "__main__":
    unittest.main()
