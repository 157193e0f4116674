"""Shared test fixtures: one intra-op thread for tiny networks; `ckpt`, a tiny random model file."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny networks on one intra-op thread: on a shared or oversubscribed CPU, OpenMP threads
    spin against each other and small shapes get many times slower (one thread is faster for them anyway)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random U-Net saved in the package's format (the command-line tests sample from it)."""
    from ddim import NoiseSchedule
    from ddim.checkpoint import save
    from ddim.models import PRESETS, UNet
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(path, UNet(PRESETS["tiny"]), NoiseSchedule.linear())
    return str(path)


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A tiny random class-conditional U-Net (3 classes, label embeddings drawn so that labels matter), saved in
    the package's format with the linear schedule."""
    from ddim import NoiseSchedule
    from ddim.checkpoint import save
    from ddim.models import PRESETS, UNet, UNetConfig
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**PRESETS["tiny"].to_dict(), "num_classes": 3}))
    with torch.no_grad():
        model.label_emb.weight.normal_()
    path = tmp_path_factory.mktemp("cond") / "cond.safetensors"
    save(path, model, NoiseSchedule.linear())
    return str(path)


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    """(parts, folder): a tiny random Stable Diffusion pipeline saved as a diffusers folder (tests/tiny_pipeline.py;
    nothing downloaded). Skipped without diffusers and transformers."""
    from tiny_pipeline import save_pipeline
    return save_pipeline(tmp_path_factory.mktemp("sd"))
