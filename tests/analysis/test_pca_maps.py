"""PCA maps against scikit-learn's PCA."""
import numpy as np
from sklearn.decomposition import PCA

from analysis.pca import pca_projection, pca_rgb


def test_projection_reproduces_scikit_learn_up_to_component_sign():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3 * 16, 12)) @ rng.normal(size=(12, 12))  # 3 images x 16 tokens, 12 channels
    ours, ratios = pca_projection(x, components=3)
    reference = PCA(n_components=3, svd_solver="full").fit(x)
    theirs = reference.transform(x)
    for c in range(3):
        sign = np.sign(ours[:, c] @ theirs[:, c])
        np.testing.assert_allclose(ours[:, c], sign * theirs[:, c], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ratios, reference.explained_variance_ratio_, rtol=1e-10)


def test_rgb_maps_are_a_joint_min_max_scaling_of_the_projection():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 16, 8))
    rgb, _ = pca_rgb(features)
    assert rgb.shape == (2, 4, 4, 3)
    scores, _ = pca_projection(features.reshape(32, 8))
    for c in range(3):  # joint over both images: extremes reached once over the group, not per image
        channel = rgb[..., c].reshape(32)
        assert channel.min() == 0.0 and channel.max() == 1.0
        np.testing.assert_allclose(channel, (scores[:, c] - scores[:, c].min()) / np.ptp(scores[:, c]))
