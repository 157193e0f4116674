"""Frechet distance, KID and statistics against closed forms; the FID Inception network on random weights."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ddim.metrics.fid import (compute_fid, feature_statistics, fid_statistics, frechet_distance, inception_features,
                              kid, load_images_uint8, load_statistics, save_statistics, to_uint8_nhwc)
from ddim.metrics.inception import (INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILENAME, INCEPTION_WEIGHTS_URL,
                                    FIDInceptionV3, load_inception, resolve_inception_weights,
                                    tf1_resize_bilinear)
from shared_fixtures import FIXTURES, needs_fixtures

MANIFEST = FIXTURES / "fid_inception_state_dict_manifest.json"


def random_spd(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def sqrtm_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# --- Frechet distance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_diagonal_gaussians(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_identity_and_symmetry(method):
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = random_spd(8, rng), random_spd(8, rng)
    assert abs(frechet_distance(mu1, s1, mu1, s1, method=method)) < 1e-9
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1, method=method), rel=1e-9)


def test_frechet_distance_commuting_full_covariances():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: tr((S1 S2)^1/2) = sum sqrt(a b)
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a, b = rng.uniform(0.2, 4, 5), rng.uniform(0.2, 4, 5)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_matches_independent_formula():
    # Non-commuting case: tr((S1 S2)^1/2) = tr((S2^1/2 S1 S2^1/2)^1/2), computed with S2's root this time.
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(7, rng), random_spd(7, rng)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    r2 = sqrtm_psd(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm_psd(r2 @ s1 @ r2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_one_dimensional():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(2.0**2 + (2.0 - 3.0) ** 2)


def test_frechet_distance_singular_covariances_are_finite():
    # N < D, as with few samples of 2048-d features: both methods stay finite and agree.
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((5, 20)), rng.standard_normal((6, 20)) + 0.5
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    d_eigh = frechet_distance(mu1, s1, mu2, s2)
    d_sqrtm = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert np.isfinite(d_eigh) and d_eigh > 0
    assert d_sqrtm == pytest.approx(d_eigh, rel=1e-3)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


# --- statistics ------------------------------------------------------------------------------------------------
def test_feature_statistics_matches_numpy():
    x = np.random.default_rng(5).standard_normal((50, 4))
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1))
    assert mu.dtype == sigma.dtype == np.float64


def test_statistics_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(6)
    mu, sigma = rng.standard_normal(5), random_spd(5, rng)
    path = save_statistics(tmp_path / "sub" / "stats.npz", mu, sigma)
    with np.load(path) as data:  # pytorch-fid layout: exactly the keys mu and sigma
        assert sorted(data.keys()) == ["mu", "sigma"]
    mu2, sigma2 = load_statistics(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temporary file left behind


def test_load_statistics_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_statistics(tmp_path / "images.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_statistics(tmp_path / "junk.npz")


# --- KID -------------------------------------------------------------------------------------------------------
def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    mean, std = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(mean) < 0.02 and std >= 0
    assert shifted > 0.5 and shifted > 20 * abs(mean)


def test_kid_linear_kernel_closed_form():
    # With k(x, y) = x.y / D the unbiased MMD^2 has expectation |mu_x - mu_y|^2 / D.
    rng = np.random.default_rng(8)
    shift = np.linspace(0, 2, 8)
    a, b = rng.standard_normal((3000, 8)), rng.standard_normal((3000, 8)) + shift
    mean, _ = kid(a, b, subsets=10, subset_size=1000, degree=1, coef0=0)
    assert mean == pytest.approx(np.sum(shift**2) / 8, rel=0.05)


def test_kid_matches_explicit_unbiased_mmd():
    # one subset holding every sample: the estimator is permutation invariant, so it equals the textbook sums
    rng = np.random.default_rng(10)
    m = 5
    x, y = rng.standard_normal((m, 3)), rng.standard_normal((m, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731  (the default kernel, D = 3)
    mean, std = kid(x, y, subsets=1, subset_size=m)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12) and std == 0


def test_kid_clips_subset_size_and_is_seeded():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    assert kid(a, b, subsets=5, subset_size=1000) == kid(a, b, subsets=5, subset_size=1000)
    with pytest.raises(ValueError):
        kid(a[:1], b)


# --- images ----------------------------------------------------------------------------------------------------
def test_load_images_uint8_folder_and_npz(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(10)
    rgb = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "imgs" / "nested").mkdir(parents=True)
    Image.fromarray(rgb[0]).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(rgb[1]).save(tmp_path / "imgs" / "nested" / "b.png")
    Image.fromarray(rgb[2, ..., 0]).save(tmp_path / "imgs" / "c.png")  # gray
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    images = load_images_uint8(tmp_path / "imgs")
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(images[0], rgb[0])
    np.testing.assert_array_equal(images[1], np.repeat(rgb[2, ..., :1], 3, -1))  # sorted: a, c, nested/b
    np.testing.assert_array_equal(images[2], rgb[1])

    np.savez(tmp_path / "x.npz", arr_0=rgb)
    np.testing.assert_array_equal(load_images_uint8(tmp_path / "x.npz"), rgb)
    np.savez(tmp_path / "gray.npz", images=rgb[..., 0])
    np.testing.assert_array_equal(load_images_uint8(tmp_path / "gray.npz"), np.repeat(rgb[..., :1], 3, -1))
    with pytest.raises(FileNotFoundError):
        load_images_uint8(tmp_path / "nowhere")


def test_to_uint8_conventions():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(2, 1, 1, 3)  # [N, C, H, W] in [-1, 1]
    out = to_uint8_nhwc(x)
    assert out.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 128, 255])
    bright = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)  # tensors are [-1, 1] even without negatives
    np.testing.assert_array_equal(to_uint8_nhwc(bright)[0, 0, :, 0], [128, 191, 255])
    np.testing.assert_array_equal(to_uint8_nhwc(np.full((1, 2, 2, 3), 0.5))[0, 0, 0], [128] * 3)
    with pytest.raises(ValueError):
        to_uint8_nhwc(np.zeros((1, 2, 2, 2)))


# --- TF1 bilinear resize ---------------------------------------------------------------------------------------
def tf1_resize_reference(img, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres), one output pixel at a time.

    As in TF's kernel, the scale in / out and the source coordinate dst * scale are float32.
    """
    in_h, in_w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        fy = float(np.float32(i) * (np.float32(in_h) / np.float32(out_h)))
        y0, y1, dy = int(np.floor(fy)), min(int(np.ceil(fy)), in_h - 1), fy - np.floor(fy)
        for j in range(out_w):
            fx = float(np.float32(j) * (np.float32(in_w) / np.float32(out_w)))
            x0, x1, dx = int(np.floor(fx)), min(int(np.ceil(fx)), in_w - 1), fx - np.floor(fx)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (11, 13)), ((9, 6), (4, 5)), ((8, 8), (299, 299))])
def test_tf1_resize_matches_reference(in_hw, out_hw):
    img = np.random.default_rng(11).uniform(0, 255, in_hw)
    got = tf1_resize_bilinear(torch.from_numpy(img)[None, None], out_hw)[0, 0].numpy()
    np.testing.assert_allclose(got, tf1_resize_reference(img, *out_hw), rtol=0, atol=1e-9)


def test_tf1_resize_identity_and_doubling():
    x = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    assert torch.equal(tf1_resize_bilinear(x, (6, 5)), x)
    # factor 2: even outputs copy the input, odd ones average neighbours, the last column repeats the edge
    row = torch.tensor([[[[0.0, 2.0, 10.0]]]])
    np.testing.assert_allclose(tf1_resize_bilinear(row, (1, 6))[0, 0, 0].numpy(), [0, 1, 2, 6, 10, 10])
    # unlike torch's half-pixel align_corners=False
    assert not torch.allclose(tf1_resize_bilinear(x, 13),
                              nn.functional.interpolate(x, size=13, mode="bilinear", align_corners=False))


# --- the Inception network -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    model = FIDInceptionV3()
    for m in model.modules():  # He init keeps activations O(1) through the depth, so features are informative
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval()


def test_inception_follows_the_2015_graph():
    from ddim.metrics.inception import _avg_pool_3x3

    # TF's average pool ignores the zero padding, so a constant map stays constant up to the border
    torch.testing.assert_close(_avg_pool_3x3(torch.ones(1, 2, 5, 5)), torch.ones(1, 2, 5, 5))
    model = FIDInceptionV3()
    assert [m.pool for m in (model.Mixed_7b, model.Mixed_7c)] == ["avg", "max"]
    # input scaling (x - 128) / 128 after the resize
    x = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    y = FIDInceptionV3.preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]))


@needs_fixtures
def test_inception_state_dict_matches_manifest():
    manifest = json.loads(MANIFEST.read_text())
    sd = FIDInceptionV3().state_dict()
    assert list(sd) == list(manifest["state_dict"])
    assert {k: list(v.shape) for k, v in sd.items()} == manifest["state_dict"]
    assert sum(v.numel() for v in sd.values()) == manifest["params"]


@pytest.mark.slow
def test_inception_forward_and_weight_loading(tmp_path, random_inception):
    images = np.random.default_rng(12).integers(0, 256, (2, 21, 17, 1), dtype=np.uint8)  # gray, odd size
    with torch.no_grad():
        direct = random_inception(torch.from_numpy(images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1).float())
    assert direct.shape == (2, 2048) and torch.isfinite(direct).all() and direct.std() > 0
    path = tmp_path / INCEPTION_WEIGHTS_FILENAME
    torch.save(random_inception.state_dict(), path)
    feats = inception_features(images, weights=path, batch_size=1)  # loads the file, gray -> RGB, batches
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, direct.double().numpy(), rtol=1e-5, atol=1e-7)


def test_missing_weights_error_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_inception_weights()
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_URL in msg and INCEPTION_WEIGHTS_ENV in msg
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILENAME) in msg
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        resolve_inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_ENV):
        resolve_inception_weights()
    (tmp_path / "env.pth").touch()
    assert resolve_inception_weights() == tmp_path / "env.pth"


class PooledPixels(nn.Module):
    """A stand-in feature network ([B, 3, H, W] in [0, 255] -> [B, 12]) so the API test needs no 2048-d algebra."""

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)


def test_compute_fid_api(tmp_path):
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 40 + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    model = PooledPixels()

    same = compute_fid(a, a, model=model, kid_subsets=3)
    assert abs(same["fid"]) < 1e-10 and abs(same["kid_mean"]) < 1e-2
    diff = compute_fid(a, b, model=model, kid_subsets=3, kid_subset_size=20)
    expected = frechet_distance(*feature_statistics(PooledPixels()(torch.from_numpy(a).permute(0, 3, 1, 2).double())),
                                *feature_statistics(PooledPixels()(torch.from_numpy(b).permute(0, 3, 1, 2).double())))
    assert diff["fid"] == pytest.approx(expected, rel=1e-5) and diff["fid"] > 0.01
    assert diff["kid_mean"] > 0 and diff["n_a"] == diff["n_b"] == 40

    save_statistics(tmp_path / "ref.npz", *fid_statistics(b, model=model))
    np.savez(tmp_path / "b.npz", arr_0=b)
    from_stats = compute_fid(a, tmp_path / "ref.npz", model=model)
    from_npz = compute_fid(a, tmp_path / "b.npz", model=model, kid_subsets=3, kid_subset_size=20)
    assert from_stats["fid"] == pytest.approx(diff["fid"], rel=1e-9) == from_npz["fid"]
    assert from_stats["kid_mean"] is None and from_stats["n_b"] is None
    assert from_npz["kid_mean"] == diff["kid_mean"]


def test_real_weights_if_present():
    try:
        path = resolve_inception_weights()
    except FileNotFoundError:
        pytest.skip(f"{INCEPTION_WEIGHTS_FILENAME} not available (set {INCEPTION_WEIGHTS_ENV})")
    model = load_inception(path)
    img = np.random.default_rng(13).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    feats = inception_features(img, model=model)
    # pool3 follows a ReLU and an average: non-negative, and the real network is far from degenerate
    assert feats.shape == (2, 2048) and (feats >= 0).all() and feats.mean() > 0.01
