"""Mixing per-dataset sources by weight, and the reference's training mixtures translated into weights.

The reference (MoVieS `train_splatrecon.py`) concatenates datasets with repeat counts: `k * ds` repeats a dataset of
N sequences k times, and a uniformly shuffled index then draws dataset d with probability k_d·N_d / Σ k·N. We stream
instead of indexing, so each source gets the sampling weight `k_d · N_d` (N_d = the sequence counts the reference
trained on, `REFERENCE_SEQUENCES`), and `WeightedChoice` draws the source of every sample from the normalised
weights with a seeded generator. The `conf/data/mix_*.yaml` files hold the resulting numbers:

| mixture    | source         | repeat k | sequences N | weight k·N | share  |
|------------|----------------|----------|-------------|------------|--------|
| mix_static | re10k          | 1        | 63,134      | 63,134     | 36.2 % |
|            | tartanair      | 100      | 686         | 68,600     | 39.3 % |
|            | matrixcity     | 10       | 4,266       | 42,660     | 24.5 % |
| mix_all    | stereo4d       | 1        | 98,262      | 98,262     | 18.1 % |
|            | dynamicreplica | 100      | 483 (left)  | 48,300     |  8.9 % |
|            | pointodyssey   | 1000     | 109         | 109,000    | 20.1 % |
|            | vkitti2        | 500      | 90          | 45,000     |  8.3 % |
|            | spring         | 2000     | 34          | 68,000     | 12.5 % |
|            | re10k          | 1        | 63,134      | 63,134     | 11.6 % |
|            | tartanair      | 100      | 686         | 68,600     | 12.6 % |
|            | matrixcity     | 10       | 4,266       | 42,660     |  7.9 % |

DynamicReplica's 966 sequences count both stereo cameras; the reference loads only `_left`, hence 483.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REFERENCE_SEQUENCES = {
    "re10k": 63134,
    "tartanair": 686,
    "matrixcity": 4266,
    "dynamicreplica": 483,
    "pointodyssey": 109,
    "vkitti2": 90,
    "spring": 34,
    "stereo4d": 98262,
}
MIX_STATIC_REPEATS = {"re10k": 1, "tartanair": 100, "matrixcity": 10}
MIX_ALL_REPEATS = {
    "stereo4d": 1,
    "dynamicreplica": 100,
    "pointodyssey": 1000,
    "vkitti2": 500,
    "spring": 2000,
    **MIX_STATIC_REPEATS,
}


def repeats_to_weights(repeats: dict[str, int], sizes: dict[str, int] = REFERENCE_SEQUENCES) -> dict[str, float]:
    """Sampling weights k_d · N_d of a reference-style `k * dataset` concatenation."""
    return {name: float(k * sizes[name]) for name, k in repeats.items()}


def normalise(weights: Sequence[float]) -> np.ndarray:
    """Probabilities from non-negative weights (at least one positive)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"source weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


class WeightedChoice:
    """Draws source indices with probabilities ∝ weights from a given numpy Generator (seeded per rank/worker)."""

    def __init__(self, weights: Sequence[float], rng: np.random.Generator):
        self.probs = normalise(weights)
        self.cum = np.cumsum(self.probs)
        self.rng = rng

    def __call__(self) -> int:
        return int(min(np.searchsorted(self.cum, self.rng.random(), side="right"), len(self.cum) - 1))
