"""Target-to-source similarity: hand-computed Bhattacharyya values, synthetic Gaussians, real digits."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from transfergrid.similarity import (
    bhattacharyya_coefficients,
    bootstrap,
    describe,
    domain_similarity,
    gbc,
    gbc_separability,
    pca_reduce,
    stratified_resample,
    target_similarity,
)
from transfergrid.sources import FASHION_MNIST_DEBIAN_DIR, read_idx


def gaussian_classes(num_classes, spacing, dim=100, per_class=80, seed=0):
    """Unit-variance classes centred on ``spacing`` · e_k: every pair of class means is spacing·√2 apart."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = np.zeros((num_classes, dim))
    centres[np.arange(num_classes), np.arange(num_classes)] = spacing
    return centres[labels] + rng.standard_normal((len(labels), dim)), labels


def test_bhattacharyya_coefficient_by_hand():
    # One dimension. Class 0: values ±1 (mean 0, population variance 1); class 1: 2 ± 2 (mean 2,
    # variance 4). σ̄ = 2.5: D_B = (2² / 2.5) / 8 + ½ (ln 2.5 − ½ (ln 1 + ln 4)) = 0.2 + 0.1116.
    features = np.array([[-1.0], [1.0], [0.0], [4.0]])
    labels = np.array([0, 0, 1, 1])
    bc = bhattacharyya_coefficients(features, labels, pca_dim=None)
    expected = math.exp(-(0.2 + 0.5 * (math.log(2.5) - 0.5 * math.log(4))))
    assert bc[0, 1] == pytest.approx(expected) and bc[1, 0] == pytest.approx(expected)
    assert np.diag(bc) == pytest.approx([1.0, 1.0])
    assert gbc(features, labels, pca_dim=None) == pytest.approx(-2 * expected)  # both ordered pairs
    assert gbc_separability(features, labels, pca_dim=None) == pytest.approx(1 - expected)


def test_separated_classes_score_high_and_overlapping_low():
    separated = gbc_separability(*gaussian_classes(5, spacing=12.0))
    overlapping = gbc_separability(*gaussian_classes(5, spacing=0.2, per_class=2000))
    assert separated > 0.99
    assert overlapping < 0.05
    # With 100 dimensions the PCA to 64 is what keeps the class means' directions.
    assert gbc_separability(*gaussian_classes(5, spacing=3.0)) == pytest.approx(
        gbc_separability(*gaussian_classes(5, spacing=3.0, dim=64)), abs=0.05
    )


def test_few_images_per_class_look_more_separable_unless_subsampled():
    # Identical class distributions: only sampling noise separates the estimated Gaussians, and it
    # does so more with fewer images per class. Cutting every class to the same count equalises it.
    features, labels = gaussian_classes(5, spacing=0.0, per_class=1000)
    few_rows = np.flatnonzero(np.arange(len(labels)) % 1000 < 50)
    few = gbc_separability(features[few_rows], labels[few_rows])
    assert gbc_separability(features, labels) < 0.05 < 0.2 < few
    cut = target_similarity(features, labels, images_per_class=50, n_resamples=2)
    assert cut["num_images"] == 250 and cut["smallest_class"] == 50
    assert cut["separability"] == pytest.approx(few, abs=0.05)


def test_separability_does_not_grow_with_class_count_but_raw_gbc_does():
    # Same pairwise geometry, 4 or 12 classes: the mean pairwise overlap stays, the sum does not.
    few, many = gaussian_classes(4, spacing=2.5), gaussian_classes(12, spacing=2.5)
    assert gbc_separability(*few) == pytest.approx(gbc_separability(*many), abs=0.05)
    assert gbc(*many) / gbc(*few) == pytest.approx(12 * 11 / (4 * 3), rel=0.25)


def test_spherical_equals_diagonal_for_isotropic_classes():
    features, labels = gaussian_classes(3, spacing=2.0, dim=20, per_class=2000)
    diagonal = gbc_separability(features, labels, pca_dim=None, gaussian_type="diagonal")
    spherical = gbc_separability(features, labels, pca_dim=None, gaussian_type="spherical")
    assert diagonal == pytest.approx(spherical, abs=0.02)
    with pytest.raises(ValueError, match="gaussian_type"):
        gbc_separability(features, labels, gaussian_type="full")


def test_stratified_resample_keeps_class_counts():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 7)
    rows = stratified_resample(labels, np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [5, 3, 7]
    assert len(set(rows.tolist())) < len(rows)  # drawn with replacement


def test_bootstrap_is_deterministic_with_a_seed():
    features, labels = gaussian_classes(4, spacing=2.0, dim=30, per_class=40)
    first = target_similarity(features, labels, n_resamples=20, seed=3)
    again = target_similarity(features, labels, n_resamples=20, seed=3)
    other = target_similarity(features, labels, n_resamples=20, seed=4)  # 40 < 100 per class: same rows
    assert first == again
    assert other["separability"] == first["separability"] and other["std"] != first["std"]
    assert 0 < first["std"] < 0.1
    assert first["ci_low"] <= first["mean"] <= first["ci_high"]
    assert first["num_classes"] == 4 and first["num_images"] == 160 and first["n_resamples"] == 20
    assert first["gbc"] == pytest.approx(-(1 - first["separability"]) * 4 * 3)
    assert first["smallest_class"] == 40
    assert "PCA to 64 dimensions" in first["method"] and "20 class-stratified" in first["method"]
    assert "at most 100 target images per class" in describe() and "seed 0" in describe()


def test_bootstrap_scores_each_resample_as_the_rows_it_drew():
    # The score sees a resample's distinct rows with their draw counts: the figures must be those of
    # scoring the drawn rows themselves, repeats included.
    features, labels = gaussian_classes(3, spacing=1.0, dim=80, per_class=30)
    spread = bootstrap(
        lambda f, y, weights: gbc_separability(f, y, pca_dim=16, weights=weights),
        features,
        labels,
        n_resamples=10,
        seed=5,
    )
    rng = np.random.default_rng(5)
    drawn = [stratified_resample(labels, rng) for _ in range(10)]
    values = [gbc_separability(features[rows], labels[rows], pca_dim=16) for rows in drawn]
    assert spread["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert spread["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert spread["value"] == pytest.approx(gbc_separability(features, labels, pca_dim=16), abs=1e-15)


def test_bootstrap_of_a_constant_score():
    spread = bootstrap(lambda f, y, weights: 0.5, np.zeros((6, 2)), np.array([0, 0, 0, 1, 1, 1]), n_resamples=5)
    assert spread == {
        "value": 0.5,
        "mean": 0.5,
        "std": 0.0,
        "bias": 0.0,
        "ci_low": 0.5,
        "ci_high": 0.5,
        "n_resamples": 5,
    }


def test_domain_similarity_of_a_translated_domain():
    # Translating every point by t moves the Earth Mover's Distance (Euclidean ground) by exactly |t|.
    features, labels = gaussian_classes(3, spacing=2.0, dim=10, per_class=30)
    same = domain_similarity(features, labels, features, labels)
    assert same["emd"] == pytest.approx(0.0, abs=1e-9) and same["similarity"] == pytest.approx(1.0)
    shift = np.zeros(10)
    shift[[0, 5]] = [3.0, 4.0]  # |t| = 5
    moved = domain_similarity(features, labels, features + shift, labels)
    assert moved["emd"] == pytest.approx(5.0)
    assert moved["similarity"] == pytest.approx(math.exp(-0.01 * 5.0))


def test_report_modules_do_not_import_torch():
    # The report job imports these; torch (pulled in by POT's backends) would make it start heavy.
    code = (
        "import sys, transfergrid.metrics, transfergrid.similarity, transfergrid.stats; print('torch' in sys.modules)"
    )
    workflow = Path(__file__).resolve().parents[1] / "workflow"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(workflow)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# Real data. Source: a resnet18 trained on digits 0-4 (sklearn's 8x8 digits upsampled to 32 px).
# Near target: digits 5-9. Far targets: Fashion-MNIST classes 0-4 (t-shirt, trouser, pullover, dress,
# coat) and 5-9 (sandal, shirt, sneaker, bag, ankle boot). 100 test images per class each.
#
# Measured while writing these tests (diagonal GBC, PCA 64, this network; 30 bootstrap resamples):
#   separability  digits 5-9 0.922 (std 0.006) > Fashion 0-4 0.818 (std 0.010), but Fashion 5-9 0.940;
#   raw pixels    digits 5-9 0.986 > Fashion 0-4 0.879, Fashion 5-9 0.962.
# Three more networks (seeds 1-3) gave the same orderings. A linear probe (logistic regression,
# 5-fold) is no more accurate on a digits network's features (5 epochs) than on a randomly
# initialised resnet18's (digits 5-9: 0.97 vs 0.98, Fashion 0-4: 0.78 vs 0.78): this small source
# does not transfer, and GBC follows how separable each target's classes are to begin with. Cui et
# al.'s EMD put Fashion 0-4 nearer the source than digits 5-9 here (23.7 vs 24.1) and for seeds 1-3;
# only the 5-epoch network ordered them the other way (20.5 vs 21.3).


def fashion_mnist_or_skip():
    if not FASHION_MNIST_DEBIAN_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FASHION_MNIST_DEBIAN_DIR} is missing on CI (apt-get install dataset-fashion-mnist)")
        pytest.skip(f"the far-domain target needs {FASHION_MNIST_DEBIAN_DIR} (apt-get install dataset-fashion-mnist)")
    images = read_idx(FASHION_MNIST_DEBIAN_DIR / "t10k-images-idx3-ubyte.gz") / 255.0
    labels = read_idx(FASHION_MNIST_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").astype(int)
    return images, labels


def per_class(labels, classes, count, rng):
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:count] for c in classes])


def as_network_input(images01):
    """[N, H, W] in [0, 1] -> [N, 3, 32, 32], bilinear, normalised to [-1, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images01, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def targets():
    """{name: (network input [N, 3, 32, 32], labels [N])} for the source and the three targets."""
    fashion_images, fashion_labels = fashion_mnist_or_skip()
    digits = load_digits()
    rng = np.random.default_rng(0)
    source = np.flatnonzero(digits.target < 5)
    near = per_class(digits.target, range(5, 10), 100, rng)
    far = per_class(fashion_labels, range(5), 100, rng)
    far_easy = per_class(fashion_labels, range(5, 10), 100, rng)
    return {
        "source": (as_network_input(digits.images[source] / 16.0), digits.target[source]),
        "near": (as_network_input(digits.images[near] / 16.0), digits.target[near] - 5),
        "far": (as_network_input(fashion_images[far]), fashion_labels[far]),
        "far_easy": (as_network_input(fashion_images[far_easy]), fashion_labels[far_easy] - 5),
    }


@pytest.fixture(scope="module")
def source_features(targets):
    """{name: (pooled features [N, 512], labels)} of the targets under a resnet18 trained on digits 0-4."""
    import torch
    import torchvision
    from torch import nn
    from torch.nn import functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    try:
        net = torchvision.models.resnet18(weights=None, num_classes=5)
        net.maxpool = nn.Identity()  # 32-px inputs: keep a 2x2 map before the global pool
        x_source, y_source = targets["source"][0], torch.from_numpy(targets["source"][1])
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(3):
            for batch in torch.randperm(len(x_source), generator=order).split(64):
                loss = F.cross_entropy(net(x_source[batch]), y_source[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        net.fc = nn.Identity()  # penultimate layer: the pooled features a feature cache holds
        net.eval()
        with torch.no_grad():
            return {name: (net(x).numpy(), y) for name, (x, y) in targets.items() if name != "source"}
    finally:
        torch.set_num_threads(threads)


def test_gbc_ranks_near_domain_above_far_domain(source_features):
    near = target_similarity(*source_features["near"], n_resamples=30)
    far = target_similarity(*source_features["far"], n_resamples=30)
    assert near["separability"] > far["separability"] + 0.05
    assert near["ci_low"] > far["ci_high"]


def test_gbc_measures_class_separability_not_only_closeness_to_the_source(targets, source_features):
    # The caveat of the module docstring, pinned: a far target with easily told classes scores above
    # the near one under the same source features ...
    assert gbc_separability(*source_features["far_easy"]) > gbc_separability(*source_features["near"])
    # ... and the near > far order above is already there in raw pixels, with no source at all.
    pixels = {name: (x[:, 0].reshape(len(x), -1).numpy(), y) for name, (x, y) in targets.items()}
    assert gbc_separability(*pixels["near"]) > gbc_separability(*pixels["far"]) + 0.05


@pytest.mark.parametrize("shape", [(60, 200), (300, 40)])  # fewer rows than features, and more
def test_weights_count_each_row_as_that_many_repeated_rows(shape):
    rng = np.random.default_rng(1)
    features = rng.normal(size=shape) * np.linspace(3.0, 0.1, shape[1])
    labels = np.arange(shape[0]) % 3
    counts = rng.integers(1, 4, size=shape[0])
    repeated = np.repeat(np.arange(shape[0]), counts)
    expanded = pca_reduce(features[repeated], 16)
    weighted = pca_reduce(features, 16, weights=counts)[repeated]
    signs = np.sign((expanded * weighted).sum(axis=0))
    np.testing.assert_allclose(weighted * signs, expanded, atol=1e-8)
    on_repeated = bhattacharyya_coefficients(features[repeated], labels[repeated], pca_dim=16)
    np.testing.assert_allclose(bhattacharyya_coefficients(features, labels, pca_dim=16, weights=counts), on_repeated)
    # The repeats matter: ignoring the weights would fail the comparisons above.
    unweighted = gbc_separability(features, labels, pca_dim=16)
    assert unweighted != pytest.approx(gbc_separability(features[repeated], labels[repeated], pca_dim=16))


@pytest.mark.parametrize("shape", [(60, 200), (300, 40)])  # fewer rows than features, and more
def test_pca_reduce_is_the_exact_pca_up_to_each_components_sign(shape):
    rng = np.random.default_rng(0)
    # A spectrum with distinct variances, so that every component is defined up to its sign.
    features = rng.normal(size=shape) * np.linspace(3.0, 0.1, shape[1])
    labels = np.arange(shape[0]) % 3
    ours = pca_reduce(features, 16)
    reference = PCA(n_components=16, svd_solver="full").fit_transform(features)
    signs = np.sign((ours * reference).sum(axis=0))
    np.testing.assert_allclose(ours * signs, reference, atol=1e-8)
    on_reference = gbc_separability(reference, labels, pca_dim=None)
    assert gbc_separability(features, labels, pca_dim=16) == pytest.approx(on_reference, abs=1e-12)
