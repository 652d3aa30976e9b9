"""Representation similarity: linear CKA and mean cosine similarity.

Linear CKA (Kornblith et al., 2019) compares two sets of representations of the same
examples, invariant to orthogonal transforms and isotropic scaling: the right tool to
ask whether a successor layer learned what its predecessor module computes.
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred [N, D] matrices."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need [N, D] matrices with the same N, got {x.shape} and {y.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return float(cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")))


def mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over rows of cos(x_i, y_i): do the two agree example by example (token by token)?"""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float(np.mean(np.sum(x * y, axis=1) / np.maximum(norms, 1e-12)))
