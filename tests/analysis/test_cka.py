"""Linear CKA against its definition: HSIC written out with the centring matrix, and its invariances."""
import numpy as np
import pytest

from analysis.cka import amplified_gram, cka, cka_from_grams, gram, gram_matrices, minibatch_cka, unbiased_hsic

RNG = np.random.default_rng(0)
X = RNG.normal(size=(23, 6, 5))  # 23 images, 6 tokens x 5 channels
Y = X @ RNG.normal(size=(5, 4)) + 0.5 * RNG.normal(size=(23, 6, 4))
Z = X + RNG.normal(size=X.shape)  # same shape as X: cross products X Zᵀ


def hsic_direct(x, y):
    """tr(K H L H) / (n - 1)^2 with K = X Xᵀ, L = Y Yᵀ and H = I - 11ᵀ/n."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(x @ x.T @ h @ y @ y.T @ h) / (n - 1) ** 2


def test_cka_of_a_feature_set_with_itself_is_one():
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    q, _ = np.linalg.qr(RNG.normal(size=(30, 30)))
    flat = X.reshape(len(X), -1)
    base = cka(X, Y)
    assert cka(flat @ q, Y) == pytest.approx(base, rel=1e-6)
    assert cka(3.7 * X, 0.01 * Y) == pytest.approx(base, rel=1e-6)
    assert 0.0 < base < 1.0


def test_cka_agrees_with_a_direct_hsic_formula():
    direct = hsic_direct(X, Y) / np.sqrt(hsic_direct(X, X) * hsic_direct(Y, Y))
    assert cka(X, Y) == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("block", [1, 4, 7, 23, 50])
def test_block_accumulated_grams_equal_the_one_shot_computation(block):
    fetched = []

    def fetch(rows):
        fetched.append(rows)
        return {"x": X[rows], "y": Y[rows], "z": Z[rows]}

    grams = gram_matrices(fetch, len(X), [("x", "x"), ("y", "y"), ("x", "z")], block=block)
    np.testing.assert_allclose(grams["x", "x"], gram(X), rtol=1e-5, atol=1e-5)  # float32 products
    np.testing.assert_allclose(grams["x", "z"], gram(X, Z), rtol=1e-5, atol=1e-5)
    assert not np.allclose(grams["x", "z"], grams["x", "z"].T)  # both off-diagonal blocks are computed
    assert cka_from_grams(grams["x", "x"], grams["y", "y"]) == pytest.approx(cka(X, Y), rel=1e-6)
    n_blocks = -(-len(X) // block)
    assert len(fetched) == n_blocks * (n_blocks + 1) // 2  # two blocks in memory at a time


def test_amplified_gram_is_the_gram_of_the_amplified_features():
    uu, uc, cc = gram(X[..., :4]), gram(X[..., :4], Y), gram(Y)
    for scale in (0.0, 1.0, 4.0):
        amplified = X[..., :4] + scale * (Y - X[..., :4])
        np.testing.assert_allclose(amplified_gram(uu, uc, cc, scale), gram(amplified), rtol=1e-5, atol=1e-4)


def test_unbiased_minibatch_cka_matches_the_written_out_estimator():
    def hsic1(k, l):  # Song et al. 2012, eq. 5, with explicit sums
        n = len(k)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
        first = sum(k[i, j] * l[j, i] for i in range(n) for j in range(n))
        second = k.sum() * l.sum() / ((n - 1) * (n - 2))
        third = 2.0 / (n - 2) * sum(k[i, :] @ l[:, j] for i in range(n) for j in range(n))
        return (first + second - third) / (n * (n - 3))

    k, l = gram(X), gram(Y)
    assert unbiased_hsic(k, l) == pytest.approx(hsic1(k, l), rel=1e-9)
    batches = [{"x": X[s], "y": Y[s]} for s in (slice(0, 12), slice(12, 23))]
    hs = {(a, b): sum(hsic1(gram(bt[a]), gram(bt[b])) for bt in batches) for a in "xy" for b in "xy"}
    expected = hs["x", "y"] / np.sqrt(hs["x", "x"] * hs["y", "y"])
    assert minibatch_cka(batches, [("x", "y")])["x", "y"] == pytest.approx(expected, rel=1e-9)
