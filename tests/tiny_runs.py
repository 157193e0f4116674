"""The tiny training run the training tests share: 8x8 grey data (24 images) and the 'tiny' U-Net, a step in a
few milliseconds."""

import numpy as np


def tiny_run_dict(tmp_path, out="run", **training):
    """The config dict of a tiny run writing to tmp_path/out (6 steps, a checkpoint every 2); `training`
    overrides the training section."""
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8))
    return {"data": {"dataset": "npz", "root": str(npz), "image_size": 8, "channels": 1, "random_flip": True},
            "model": {"preset": "tiny", "dropout": 0.1, "ema_rate": 0.9, "ema_warmup": True},
            "diffusion": {"num_diffusion_timesteps": 100, "antithetic": True},
            "training": {"batch_size": 4, "n_iters": 6, "snapshot_freq": 2, "keep_last": 2, "log_freq": 1,
                         "sample_freq": 0, "sample_steps": 5, "n_samples": 4, **training},
            "optim": {"lr": 1e-3, "warmup": 3},
            "out_dir": str(tmp_path / out)}
