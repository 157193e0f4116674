"""The benchmark's bookkeeping (its timings are measured by `ddim bench`, never asserted in tests)."""

import pytest
import torch

from ddim.bench import _Timed, combine, forward_flops, markdown
from ddim.commands import main


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
        {"path": "diffusers-fast", "batch": 8, "steps": 50, "seconds": 2.0, "images_per_s": 4.0, "peak_rss_mb": 1,
         "warmup_s": 0},
        {"path": "ddim-fast", "batch": 8, "steps": 50, "seconds": 2.0, "images_per_s": 5.0, "sampler_share": 0.004,
         "peak_rss_mb": 1, "warmup_s": 0},
        {"path": "ddim-compile", "batch": 8, "steps": 50, "error": ["RuntimeError: boom"]},
    ]
    text = markdown(results, {"float32": 100.0, "bfloat16": 200.0}, 1e9, "test machine", 50)
    # the headline compares like with like (5 / 4); the mixed ratio against fp32 diffusers is 5 / 2
    assert "| 8 | ddim-fast | 5.000 | **1.25x** | 2.50x | 250 (125%) | 0.40% |" in text
    assert "| 8 | diffusers-fast | 4.000 | - | 2.00x |" in text
    assert "failed: RuntimeError: boom" in text


def test_repeated_runs_combine_to_the_median_and_report_the_spread():
    runs = [{"path": "ddim-fp32", "batch": 8, "steps": 50, "seconds": 8 / s, "images_per_s": s, "sampler_share": f,
             "peak_rss_mb": m, "warmup_s": 1.0} for s, f, m in [(1.0, 0.003, 10), (3.0, 0.001, 30), (2.0, 0.002, 20)]]
    row = combine(runs)
    assert row["images_per_s"] == 2.0 and row["sampler_share"] == 0.002 and row["peak_rss_mb"] == 30
    assert row["runs"] == 3 and row["spread"] == (1.0, 3.0)
    text = markdown([row], {"float32": 100.0, "bfloat16": 200.0}, 1e9, "test machine", 50)
    assert "| 8 | ddim-fp32 | 2.000 |" in text and "| 3: 1.000-3.000 |" in text
    assert combine([runs[0], {"path": "ddim-fp32", "batch": 8, "steps": 50, "error": ["x"]}])["error"] == ["x"]


@pytest.mark.parametrize("flag", ["--repeats", "--batches", "--steps", "--threads"])
def test_counts_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit):
        main(["bench", flag, "0"])
    assert f"argument {flag}: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_work(capsys):
    assert main(["bench", "--device", "cuda", "--batches", "1", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert "device 'cuda': CUDA is not available" in captured.err and "matmul" not in captured.out


def test_an_unknown_device_is_refused(capsys):
    assert main(["bench", "--device", "tpu7", "--batches", "1", "--steps", "1"]) == 2
    assert "device must be cpu or cuda[:N], got 'tpu7'" in capsys.readouterr().err


def test_synchronize_and_matmul_peak_on_the_cpu():
    from ddim.bench import matmul_peak
    from ddim.benchmarking import synchronize
    synchronize("cpu")                                   # a no-op, not an error
    assert matmul_peak(torch.float32, n=64, repeats=1, device="cpu") > 0
