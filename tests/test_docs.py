"""The Python examples in the README and docs run as written (on the embedded model, no download)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/PERFORMANCE.md"]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(doc, capsys):
    blocks = _python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    for code in blocks:
        exec(compile(code, f"{doc} example", "exec"), {"__name__": "__doc_example__"})


def test_readme_example_reconstructs():
    """The README's encode/decode lines print a small reconstruction error on the embedded model."""
    import torch

    from ddim import DDIMSampler
    from ddim.generate import load_model

    loaded = load_model()
    sampler = DDIMSampler(loaded.model, loaded.schedule, loaded.prediction)
    x_0 = sampler.sample(torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)), steps=50)
    x_rec = sampler.sample(sampler.invert(x_0, steps=50), steps=50)
    assert ((x_rec - x_0) ** 2).mean().item() < 1e-2
