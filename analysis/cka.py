"""Linear CKA (Kornblith et al. 2019) on per-image feature vectors (tokens flattened), DESIGN §7.

`CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))` on the linear kernels `K = X Xᵀ`, centred
(`HKH`, `H = I − 11ᵀ/n`). `gram_matrices` fills the `n × n` Gram matrices block by block from a fetch
function (a store, or features computed batch by batch), holding two row blocks at a time, so n images of
any size never have to be in memory together; any product `X_a X_bᵀ` of two arrays can be asked for, which
gives the Gram matrix of every guidance scale from three products (`amplified_gram`). `minibatch_cka` is
the one-pass alternative for very large n: unbiased HSIC averaged over minibatches (Nguyen et al. 2021).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Fetch", "gram", "centre", "cka_from_grams", "cka", "gram_matrices", "amplified_gram", "unbiased_hsic",
           "minibatch_cka"]

Fetch = Callable[[slice], Mapping[str, np.ndarray]]  # rows -> {array: (rows, ...) features}


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)


def gram(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """`X Yᵀ` (default `Y = X`) of per-sample features flattened, float32 products summed in float64."""
    x = _flat(x)
    return (x @ (x if y is None else _flat(y)).T).astype(np.float64)


def centre(k: np.ndarray) -> np.ndarray:
    """`H K H`: rows and columns with zero mean."""
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    """Linear CKA of two `n × n` Gram matrices (the 1/(n−1)² of HSIC cancels)."""
    kc, lc = centre(k), centre(l)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature sets of the same n samples (in memory)."""
    return cka_from_grams(gram(x), gram(y))


def _blocks(n: int, block: int) -> list[slice]:
    if block <= 0:
        raise ValueError("block must be positive")
    return [slice(start, min(start + block, n)) for start in range(0, n, block)]


def gram_matrices(fetch: Fetch, n: int, products: Sequence[tuple[str, str]], *,
                  block: int) -> dict[tuple[str, str], np.ndarray]:
    """`{(a, b): X_a X_bᵀ}` (n × n, float64) for each requested pair of arrays, from row blocks of `block`
    samples: block `i` is fetched once, block `j > i` once per `i` — two blocks in memory at a time."""
    grams = {pair: np.zeros((n, n)) for pair in products}
    names = sorted({a for pair in products for a in pair})
    blocks = _blocks(n, block)

    def flat(rows: slice) -> dict[str, np.ndarray]:  # (rows, D) float32, converted once per fetch
        values = fetch(rows)
        return {a: _flat(values[a]) for a in names}

    for i, rows_i in enumerate(blocks):
        left = flat(rows_i)
        for rows_j in blocks[i:]:
            right = left if rows_j == rows_i else flat(rows_j)
            for (a, b), g in grams.items():
                g[rows_i, rows_j] = left[a] @ right[b].T
                if rows_j != rows_i:
                    g[rows_j, rows_i] = right[a] @ left[b].T
    return grams


def amplified_gram(uu: np.ndarray, uc: np.ndarray, cc: np.ndarray, scale: float) -> np.ndarray:
    """Gram matrix of `X_s = X_u + s(X_c − X_u)` from `X_u X_uᵀ`, `X_u X_cᵀ` and `X_c X_cᵀ`."""
    return (1 - scale) ** 2 * uu + scale * (1 - scale) * (uc + uc.T) + scale**2 * cc


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_1 (Song et al. 2012): unbiased, on Gram matrices with their diagonals zeroed; n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 samples per minibatch")
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    trace = (k * l.T).sum()
    return float((trace + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones @ k @ l @ ones)
                 / (n * (n - 3)))


def minibatch_cka(batches: Iterable[Mapping[str, np.ndarray]], pairs: Sequence[tuple[str, str]]
                  ) -> dict[tuple[str, str], float]:
    """CKA of each pair of arrays from unbiased HSIC averaged over minibatches (one pass)."""
    names = sorted({a for pair in pairs for a in pair})
    totals: dict[tuple[str, str], float] = {}
    count = 0
    for batch in batches:
        grams = {a: gram(batch[a]) for a in names}
        for a, b in {*pairs, *((a, a) for a in names)}:
            totals[a, b] = totals.get((a, b), 0.0) + unbiased_hsic(grams[a], grams[b])
        count += 1
    if not count:
        raise ValueError("no minibatches")
    return {(a, b): totals[a, b] / np.sqrt(totals[a, a] * totals[b, b]) for a, b in pairs}
