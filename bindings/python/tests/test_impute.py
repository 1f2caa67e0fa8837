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
