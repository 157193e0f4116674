"""ddim.images: pixels map to [-1, 1] and back with rounding to nearest; grids and PNGs are written whole, at the
size and zoom asked for. (The data sets built on these readers: test_data.py; FID's uint8 loader: test_fid.py.)"""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import images


def test_uint8_round_trip_and_rounding():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(images.to_uint8(images.from_uint8(u)), u)
    # round to nearest, clamp outside [-1, 1]
    x = torch.tensor([-2.0, -1.0, 1.0, 3.0, 0.0])
    assert images.to_uint8(x).tolist() == [0, 0, 255, 255, 128]  # 127.5 rounds half to even -> 128
    x = torch.tensor([(10.4 / 127.5) - 1, (10.6 / 127.5) - 1])
    assert images.to_uint8(x).tolist() == [10, 11]


def test_grid_and_images_written(tmp_path):
    imgs = torch.rand(5, 3, 4, 4) * 2 - 1
    p = images.save_image_grid(imgs, tmp_path / "g.png", nrow=3, padding=1)
    with Image.open(p) as im:
        assert im.size == (1 + 3 * 5, 1 + 2 * 5) and im.mode == "RGB"
    grid = images.make_grid(imgs, nrow=3, padding=1)
    assert np.array_equal(grid[1:5, 1:5], images.to_uint8(imgs[0]).permute(1, 2, 0).numpy())
    gray = images.save_image_grid(torch.zeros(2, 1, 4, 4), tmp_path / "gray.png", nrow=2)
    with Image.open(gray) as im:
        assert im.mode == "L" and np.asarray(im)[2, 2] == 128
    big = images.save_image_grid(imgs, tmp_path / "big.png", nrow=3, padding=1, scale="auto")  # 4 px -> x16
    with Image.open(big) as im:
        assert im.size == (16 * (1 + 3 * 5), 16 * (1 + 2 * 5))
        assert np.array_equal(np.asarray(im)[16:80:16, 16:80:16], grid[1:5, 1:5])  # nearest: pixels unchanged
    assert images.display_scale(16) == 4 and images.display_scale(32) == 2 and images.display_scale(256) == 1
    with pytest.raises(ValueError, match="scale"):
        images.save_image_grid(imgs, tmp_path / "bad.png", scale=0)
    paths = images.save_images(imgs[:2], tmp_path / "each", prefix="s")
    assert [p.name for p in paths] == ["s000000.png", "s000001.png"]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        images.make_grid(torch.zeros(1, 2, 4, 4))

