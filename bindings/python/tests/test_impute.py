"""Tests of multiple imputation through the Python package: the low-level
Model.impute (coreflow_impute with a partial of sample stride 0) and the
estimator's impute.

Run: python -m unittest discover -s bindings/python/tests -v
"""

import unittest

import numpy as np

import synthetic

import coreflow


class Impute(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.x = synthetic.planted(200, 10, 8, 2, 2, 5e-2, 5)
        cls.est = coreflow.CoreFlow(rank=(2, 2), core_model="gaussian", threads=1).fit(cls.x)
        cls.model = cls.est.model_
        rng = np.random.default_rng(1)
        cls.y = cls.x[:3].copy()
        cls.mask = rng.random(cls.y.shape) >= 0.3
        cls.y_nan = np.where(cls.mask, cls.y, np.nan)

    def test_shape_and_observed_entries(self):
        d = self.est.impute(self.y_nan, 40, random_state=2)
        self.assertEqual(d.shape, (40, 3, 10, 8))
        obs = np.broadcast_to(self.mask, d.shape)
        self.assertTrue(np.array_equal(d[obs], np.broadcast_to(self.y, d.shape)[obs]))
        self.assertTrue(np.all(np.isfinite(d)))
        # The missing entries spread: at least the fitted noise level.
        var = d.var(axis=0)[~self.mask]
        self.assertGreater(var.min(), 0.5 * self.est.info_["noise_variance"])

    def test_mask_and_nan_give_the_same_draws(self):
        a = self.est.impute(self.y_nan, 10, random_state=4)
        b = self.est.impute(self.y, 10, mask=self.mask, random_state=4)
        self.assertTrue(np.array_equal(a, b))

    def test_draws_depend_only_on_seed_and_index(self):
        y0 = self.y_nan[:1]
        full = self.model.impute(y0, 100, seed=9)
        a = self.model.impute(y0, 37, seed=9)
        b = self.model.impute(y0, 63, seed=9, first_index=37)
        self.assertTrue(np.array_equal(full, np.concatenate([a, b])))
        other = self.model.impute(y0, 100, seed=10)
        self.assertFalse(np.array_equal(full, other))

    def test_draws_centre_on_the_map_completion(self):
        d = self.est.impute(self.y_nan, 400, random_state=3)
        filled = self.est.complete(self.y_nan)
        miss = ~self.mask
        mean, sd = d.mean(axis=0)[miss], d.std(axis=0)[miss]
        self.assertTrue(np.all(np.abs(mean - filled[miss]) <= 5 * sd / np.sqrt(400)))

    def test_observed_level(self):
        y0 = self.y_nan[:1]
        fitted = self.model.impute(y0, 50, seed=9)
        self.assertTrue(np.array_equal(fitted, self.model.impute(y0, 50, seed=9, level="fitted")))
        full = self.model.impute(y0, 100, seed=9, level="observed")
        a = self.model.impute(y0, 37, seed=9, level="observed")
        b = self.model.impute(y0, 63, seed=9, first_index=37, level="observed")
        self.assertTrue(np.array_equal(full, np.concatenate([a, b])))
        obs = np.broadcast_to(self.mask[:1], full.shape)
        self.assertTrue(np.array_equal(full[obs], np.broadcast_to(self.y[:1], full.shape)[obs]))
        # Data of the model: the level stays near the fitted one.
        d = self.est.impute(self.y_nan, 400, random_state=3, level="observed")
        f = self.est.impute(self.y_nan, 400, random_state=3)
        miss = ~self.mask
        ratio = d.var(axis=0)[miss].mean() / f.var(axis=0)[miss].mean()
        self.assertTrue(0.5 < ratio < 2.0, ratio)
        # The option through sample_options is the same as level=.
        so = coreflow.sample_options(impute_level=coreflow.IMPUTE_LEVEL_OBSERVED)
        self.assertTrue(np.array_equal(
            full, self.model.impute(y0, 100, seed=9, options=so, level=None)))

    def test_an_unknown_level_is_refused(self):
        with self.assertRaises(ValueError):
            self.est.impute(self.y_nan, 3, level="training")
        with self.assertRaises(ValueError):
            self.model.impute(self.y_nan, 3, level=1)
        so = coreflow.sample_options(impute_level=7)
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            self.model.impute(self.y_nan, 3, options=so, level=None)
        self.assertEqual(cm.exception.name, "COREFLOW_ERR_INVALID_ARGUMENT")
        self.assertIn("impute_level", cm.exception.message)

    def test_errors_name_the_argument(self):
        with self.assertRaises(ValueError):
            self.est.impute(self.y_nan, 0)
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            self.model.impute(np.full((1, 10, 8), np.inf), 3)
        self.assertEqual(cm.exception.name, "COREFLOW_ERR_NON_FINITE")
        self.assertIn("partial", cm.exception.message)
        with self.assertRaises(coreflow.CoreFlowError) as cm:
            self.model.impute(np.zeros((1, 9, 8)), 3)
        self.assertEqual(cm.exception.name, "COREFLOW_ERR_SHAPE")


if __name__ == "__main__":
    unittest.main()
