"""Seeded synthetic matrices shared by the tests."""

import numpy as np


def planted(count, rows, cols, r, s, noise, seed):
    """count matrices U C_i V^T + noise, C-order (count, rows, cols)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, r)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, s)))
    c = rng.standard_normal((count, r, s)) * np.arange(r * s, 0, -1).reshape(r, s)
    return np.einsum("ia,nab,jb->nij", u, c, v) + noise * rng.standard_normal((count, rows, cols))
