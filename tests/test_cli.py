"""The command line on a tiny random model (`ckpt`, tests/conftest.py): every command runs, writes what it says,
and fails clearly. Sample runs' resume and refusal rules: test_runs.py; the seed rule: test_generate.py."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddim.commands import build_parser, main
from ddim.images import display_scale


def _png(path):
    return np.asarray(Image.open(path))


def _grid(path, tile=16):
    """A picture command's grid, zoomed back to one pixel per image pixel (they zoom small images for viewing)."""
    zoom = display_scale(tile)
    g = _png(path)
    assert g.shape[0] % zoom == 0 and g.shape[1] % zoom == 0
    return g[::zoom, ::zoom]


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"sample", "encode", "reconstruct", "interpolate", "consistency", "trajectory", "fid",
            "fid-stats"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert ("example: " in text or "examples:\n  " in text) and "ddim " in text.split("example")[-1], name


def test_bad_input_exits_non_zero_with_a_named_parameter(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:          # caught by the flag's type, before anything runs
        main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "0", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "argument --steps: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "1001", "--out", str(tmp_path / "x")]) == 2
    assert "steps must be an integer in [1, T=1000]" in capsys.readouterr().err
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--eta", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "eta must be" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "z")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--skip", "cubic"])


def test_reconstruct_writes_inputs_and_one_row_per_step_count(ckpt, tmp_path):
    # That the error falls with S is proven on closed forms in test_sampler.py; here: the report and the grid.
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["reconstruct", "--ckpt", ckpt, "--input", str(folder), "--steps", "2", "4",
                 "--out", str(tmp_path / "rec")]) == 0
    mse = json.loads((tmp_path / "rec" / "mse.json").read_text())
    assert set(mse) == {"2", "4"} and all(0 <= v <= 1 for v in mse.values())
    grid = _grid(tmp_path / "rec" / "reconstructions.png")
    assert grid.shape[:2] == (2 + 3 * 18, 2 + 3 * 18)      # rows: inputs, S=2, S=4; 3 images each
    assert np.array_equal(grid[2:18, 2:18], np.asarray(Image.open(sorted(folder.iterdir())[0])))


def test_encode_writes_latents(ckpt, tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", arr_0=arr)
    assert main(["encode", "--ckpt", ckpt, "--input", str(tmp_path / "x.npz"), "--steps", "4",
                 "--out", str(tmp_path / "z.npz")]) == 0
    z = np.load(tmp_path / "z.npz")["latents"]
    assert z.shape == (2, 3, 16, 16) and np.isfinite(z).all()


@pytest.mark.parametrize("command, extra, rows, cols", [
    ("consistency", ["--n", "3", "--steps", "2", "4"], 2, 3),
    ("trajectory", ["--n", "2", "--steps", "4", "--columns", "4"], 2, 5),
    ("interpolate", ["--pairs", "2", "--frames", "4", "--steps", "3"], 2, 4),
])
def test_picture_commands_write_grids_of_the_right_size(ckpt, tmp_path, command, extra, rows, cols):
    out = tmp_path / f"{command}.png"
    assert main([command, "--ckpt", ckpt, "--out", str(out)] + extra) == 0
    h, w = _grid(out).shape[:2]
    assert (h, w) == (2 + rows * 18, 2 + cols * 18)
    assert main([command, "--ckpt", ckpt, "--out", str(out)] + extra) == 2     # no silent overwrite


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "ddim", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "sample" in r.stdout


@pytest.mark.slow
def test_torchrun_shards_give_the_same_images_as_one_process(ckpt, tmp_path):
    common = ["sample", "--ckpt", ckpt, "--num-samples", "5", "--steps", "3", "--eta", "0.5", "--quiet",
              "--batch-size", "2", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "ddim"] + common + ["--out", str(tmp_path / "two")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    one = np.load(tmp_path / "one" / "samples.npz")["arr_0"]
    assert np.array_equal(one, np.load(tmp_path / "two" / "samples.npz")["arr_0"])
    assert r.stdout.count("wrote 5 images") == 1          # rank 0 reports; the others stay quiet


def test_train_then_sample_from_the_run(tmp_path):
    # The newcomer's loop, end to end: train a few steps on random images, then sample from what it wrote.
    arr = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=arr)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "npz", "--data-root", str(tmp_path / "data.npz"), "--model", "tiny",
                 "--image-size", "16", "--channels", "3", "--batch-size", "4", "--steps", "3", "--ckpt-every", "3",
                 "--sample-every", "0", "--n-samples", "4", "--sample-steps", "2", "--device", "cpu",
                 "--out", str(run)]) == 0
    assert (run / "config.json").exists() and (run / "model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1
    assert main(["sample", "--ckpt", str(run / "model.safetensors"), "--n", "2", "--steps", "3", "--quiet",
                 "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)


def test_batch_size_flag_takes_integers_or_auto(capsys):
    for bad in ["0", "-3", "big"]:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["sample", "--batch-size", bad])
        assert "integer >= 1 or 'auto'" in capsys.readouterr().err
    assert build_parser().parse_args(["sample", "--batch-size", "auto"]).batch_size == "auto"


def test_a_bad_value_writes_nothing_and_the_corrected_rerun_works(ckpt, tmp_path, capsys):
    out = tmp_path / "s5"
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--steps", "3", "--eta", "5", "--quiet", "--out", str(out)]) == 2
    assert "eta=5.0 makes 1 - a_s - sigma^2 negative" in capsys.readouterr().err
    assert not (out / "run.json").exists()
    common = ["sample", "--ckpt", ckpt, "--n", "2", "--steps", "3", "--quiet", "--out", str(out)]
    assert main(common + ["--eta", "0.5"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["eta"] == 0.5 and run["dtype"] == "float32" and run["solver"] == "ddim" and run["model"]


@pytest.mark.parametrize("command", ["encode", "reconstruct", "interpolate", "consistency"])
def test_deterministic_commands_take_no_stochastic_flags(command, capsys):
    for flag in (["--eta", "0.5"], ["--variance", "large"], ["--clip-denoised"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--input", "digits", *flag])
        assert "unrecognized arguments" in capsys.readouterr().err


def test_plot_draws_the_loss_curve_of_a_run_and_tolerates_a_torn_last_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 2e-4}) for s in range(1, 60)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 60, "lo')
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("logged, mean", [(10, None), (39, None), (40, "running mean of 2"), (100, "running mean of 5")])
def test_plot_draws_a_running_mean_only_where_it_averages(tmp_path, monkeypatch, logged, mean):
    from ddim import evaluation
    from ddim.evaluation import curves
    figures = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, path: figures.append(fig))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3}) + "\n"
                                                    for s in range(1, logged + 1)))
    evaluation.plot_training(tmp_path)
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert [lb for lb in labels if lb.startswith("running mean")] == ([mean] if mean else [])


def test_sample_with_a_feature_cache(ckpt, tmp_path):
    args = ["sample", "--ckpt", ckpt, "--n", "2", "--steps", "4", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--cache-interval", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--out", str(tmp_path / "c"), "--cache-interval", "2"]) == 0
    a, b = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in "ab")
    assert np.array_equal(a, b)                                     # interval 1 is exactly the plain network
    assert json.loads((tmp_path / "c" / "run.json").read_text())["cache_interval"] == 2


def test_ctrl_c_while_sampling_keeps_the_images_and_the_rerun_resumes(ckpt, tmp_path, monkeypatch, capsys):
    import ddim.generate as gen
    args = ["sample", "--ckpt", ckpt, "--n", "6", "--steps", "2", "--batch-size", "2", "--quiet",
            "--out", str(tmp_path / "r")]
    assert main(args[:-1] + [str(tmp_path / "full")]) == 0
    real, calls = gen.sample_batch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(gen, "sample_batch", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "r" / "images").iterdir()) == ["000000.png", "000001.png"]
    monkeypatch.setattr(gen, "sample_batch", real)
    assert main(args) == 0
    assert np.array_equal(np.load(tmp_path / "r" / "samples.npz")["arr_0"],
                          np.load(tmp_path / "full" / "samples.npz")["arr_0"])


