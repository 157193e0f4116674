"""The benchmark's bookkeeping (its timings are measured by `ddim bench`, never asserted in tests)."""

import torch

from ddim.bench import _Timed, forward_flops, markdown


def test_forward_flops_counts_a_convolution():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    model = lambda x, t: conv(x)  # noqa: E731
    assert forward_flops(model, (2, 3, 5, 5)) == 2 * 2 * 8 * 3 * 9 * 25   # 2 * B * Cout * Cin * k^2 * H * W


def test_timed_wrapper_accumulates_only_the_network_time():
    net = _Timed(lambda x, t: x + 1)
    net(torch.zeros(2), torch.zeros(2))
    net(torch.zeros(2), torch.zeros(2))
    assert 0 < net.seconds < 1


def test_markdown_reports_ratios_against_diffusers_per_batch():
    results = [
        {"path": "diffusers", "batch": 8, "steps": 50, "seconds": 4.0, "images_per_s": 2.0, "peak_rss_mb": 1, "warmup_s": 0},
        {"path": "ddim-fast", "batch": 8, "steps": 50, "seconds": 2.0, "images_per_s": 5.0, "sampler_share": 0.004,
         "peak_rss_mb": 1, "warmup_s": 0},
        {"path": "ddim-compile", "batch": 8, "steps": 50, "error": ["RuntimeError: boom"]},
    ]
    text = markdown(results, {"float32": 100.0, "bfloat16": 200.0}, 1e9, "test machine", 50)
    assert "| 8 | ddim-fast | 5.000 | 2.50x | 250 (125%) | 0.40% |" in text
    assert "failed: RuntimeError: boom" in text
