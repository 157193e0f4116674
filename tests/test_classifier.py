"""The digits classifier: preprocessing, held-out accuracy of the shipped weights, and evaluate_digits."""

import pytest
import torch

from ddim.metrics.classifier import (CLASSIFIER_WEIGHTS, DigitsClassifier, _augment, digits_images, digits_split,
                                     evaluate_digits, load_digits_classifier, save_digits_classifier,
                                     train_digits_classifier)


@pytest.fixture(scope="module")
def classifier():
    if not CLASSIFIER_WEIGHTS.is_file():
        pytest.skip(f"shipped weights missing: {CLASSIFIER_WEIGHTS}")
    return load_digits_classifier(train_if_missing=False)


def test_digits_images_preprocessing():
    x, y = digits_images()
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32 and y.shape == (1797,)
    assert x.min() >= -1 and x.max() <= 1 and set(y.tolist()) == set(range(10))
    x8, _ = digits_images(size=8)
    from sklearn.datasets import load_digits

    torch.testing.assert_close(x8[:, 0], torch.as_tensor(load_digits().images, dtype=torch.float32) / 8 - 1)
    # exact 2x bilinear upsampling (align_corners=False, edges clamped) gives every source pixel a total weight
    # of 2 per axis, so it preserves each image's mean
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), x8.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)


def test_digits_split_is_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = digits_split()
    assert len(y_train) + len(y_test) == 1797
    counts = torch.bincount(y_test, minlength=10).float() / torch.bincount(torch.cat([y_train, y_test]))
    assert torch.allclose(counts, torch.full((10,), 0.2), atol=0.01)
    train_set = {tuple(v.tolist()) for v in x_train.flatten(1)}
    assert sum(tuple(v.tolist()) in train_set for v in x_test.flatten(1)) < 5  # the digits hold few duplicates


def test_augment_identity_and_background():
    x, _ = digits_images()
    g = torch.Generator().manual_seed(0)
    same = _augment(x[:8], g, max_shift=0, max_rotate_deg=0, max_scale=0)
    torch.testing.assert_close(same, x[:8], atol=1e-5, rtol=0)
    moved = _augment(x[:8], g)
    assert moved.shape == x[:8].shape and moved.min() >= -1 - 1e-6 and moved.max() <= 1 + 1e-6


def test_shipped_classifier_held_out_accuracy(classifier):
    _, _, x_test, y_test = digits_split()
    with torch.no_grad():
        accuracy = (classifier(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.95
    assert classifier.test_accuracy == pytest.approx(accuracy, abs=0.01)
    assert CLASSIFIER_WEIGHTS.stat().st_size < 1_000_000


def test_evaluate_digits_real_vs_noise(classifier):
    x, _ = digits_images()
    _, _, x_test, _ = digits_split()
    real = evaluate_digits(x, classifier)
    assert real["confident_share"] > 0.9 and real["n_samples"] == 1797
    assert len(real["histogram"]) == 10 and min(real["histogram"]) > 0 and sum(real["histogram"]) == 1797
    assert abs(real["frechet_distance_classifier"]) < 1e-6  # the same set as the reference
    held_out = evaluate_digits(x_test, classifier)
    noise = evaluate_digits(torch.rand(360, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                            classifier)
    assert held_out["confident_share"] > 0.9 and min(held_out["histogram"]) > 0
    assert 0 < held_out["frechet_distance_classifier"] < 0.05 * noise["frechet_distance_classifier"]
    assert "fid" not in noise  # the classifier Frechet distance is not FID
    with pytest.raises(ValueError):
        evaluate_digits(torch.zeros(4, 3, 16, 16), classifier)


def test_evaluate_digits_reads_uint8_images_as_saved(classifier):
    """samples.npz holds uint8 NHWC; reading it must give the numbers of the [-1, 1] tensor it came from."""
    x = digits_images()[0][:200]
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    ref = evaluate_digits(u8.float() / 127.5 - 1, classifier)
    for form in (u8.permute(0, 2, 3, 1).numpy(), u8, u8.numpy()):  # NHWC array, NCHW tensor, NCHW array
        got = evaluate_digits(form, classifier)
        assert got["histogram"] == ref["histogram"]
        assert got["frechet_distance_classifier"] == pytest.approx(ref["frechet_distance_classifier"], rel=1e-9)


def test_train_and_save_round_trip(tmp_path):
    # a quick smoke run; the shipped weights are the full run (train_digits_classifier() with its defaults)
    model, accuracy = train_digits_classifier(seed=1, epochs=2, max_train=256)
    assert isinstance(model, DigitsClassifier) and not model.training and 0 <= accuracy <= 1
    path = save_digits_classifier(model, tmp_path / "c.safetensors", seed=1)
    loaded = load_digits_classifier(path)
    x = digits_images()[0][:5]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        assert loaded.features(x).shape == (5, DigitsClassifier.feature_dim)
    assert loaded.test_accuracy == accuracy
    with pytest.raises(FileNotFoundError):
        load_digits_classifier(tmp_path / "missing.safetensors", train_if_missing=False)
