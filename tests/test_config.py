"""ddim.config: TrainConfig read from YAML (the official layout and our own), type-checked and range-checked before
anything is built; the packaged configs by name; the command line's flags over the file (ddim/commands/train.py
builds the config); SampleConfig's fields. (SampleConfig's bad-value table is test_bad_input.py::
test_sample_config_names_the_field; its DeepCache fields: test_deepcache.py.)"""

import argparse
from pathlib import Path

import pytest
import torch

from ddim import train as tr
from ddim.commands.train import add_train_arguments, config_from_args
from ddim.config import (PACKAGED_CONFIGS, PACKAGED_CONFIGS_DIR, SampleConfig, TrainConfig, TrainingConfig,
                         config_from_dict, load_yaml)
from ddim.errors import DDIMError

REPO = Path(__file__).resolve().parents[1]


# --- TrainConfig: YAML, types, ranges ---------------------------------------------------------------------------
def test_official_yaml_and_own_yaml_load():
    cfg = load_yaml(REPO / "configs" / "cifar10.yml")
    assert cfg.data.dataset == "cifar10" and cfg.training.batch_size == 128 and cfg.model.ema_rate == 0.9999
    assert cfg.optim.grad_clip == 1.0 and cfg.model.ch_mult == [1, 2, 2, 2]
    unet = tr.build_unet_config(cfg)
    assert unet.ch == 128 and unet.attn_resolutions == (16,) and unet.image_size == 32
    digits = load_yaml(REPO / "configs" / "digits.yml")
    assert digits.data.dataset == "digits" and tr.build_unet_config(digits).in_channels == 1


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"'optim'.*\['lrr'\]"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict({"optimiser": {}})


def test_cli_flags_override_yaml():
    p = add_train_arguments(argparse.ArgumentParser())
    args = p.parse_args(["--config", str(REPO / "configs" / "digits.yml"), "--lr", "3e-4", "--steps", "7",
                         "--random-flip", "true", "--ch-mult", "1,2", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg.optim.lr == 3e-4 and cfg.training.n_iters == 7 and cfg.data.random_flip is True
    assert cfg.model.ch_mult == [1, 2] and cfg.out_dir == "x" and cfg.training.batch_size == 64
    assert config_from_args(p.parse_args([])) == TrainConfig()


@pytest.mark.parametrize("section, key, text, message", [
    ("training", "n_iters", "true", "training.n_iters must be an integer, got true (bool)"),
    ("data", "random_flip", '"no"', "data.random_flip must be true or false, got 'no' (str)"),
    ("training", "batch_size", '"64"', "training.batch_size must be an integer, got '64' (str)"),
    ("training", "batch_size", "64.0", "training.batch_size must be an integer, got 64.0 (float)"),
    ("optim", "lr", "null", "optim.lr must be a number, got null"),
    ("optim", "lr", "fast", "optim.lr must be a number, got 'fast' (str)"),
    ("model", "ch_mult", "2", "model.ch_mult must be a list of integers or null, got 2 (int)"),
    ("model", "ch_mult", "[1, true]", "model.ch_mult must be a list of integers or null, got [1, True] (list)"),
    ("model", "dropout", '"0.1x"', "model.dropout must be a number or null, got '0.1x' (str)"),
    ("model", "ema", "1", "model.ema must be true or false, got 1 (int)"),
    ("data", "dataset", "7", "data.dataset must be a string, got 7 (int)"),
])
def test_yaml_values_of_the_wrong_type_name_file_and_key(tmp_path, section, key, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(f"{section}:\n  {key}: {text}\n")
    with pytest.raises(DDIMError) as e:
        load_yaml(path)
    assert str(e.value) == f"{path}: {message}"


def test_yaml_numbers_pyyaml_reads_as_strings_are_floats(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("optim:\n  lr: 1e-3\n  grad_clip: 2\nmodel:\n  dropout: 0\n  ch_mult: [1, 2]\n"
                    "data:\n  random_flip: false\ntraining:\n  n_iters: 7\n")
    import yaml
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == "1e-3"           # the reason for the rule
    cfg = load_yaml(path).validate()
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float and type(cfg.optim.grad_clip) is float
    assert cfg.model.dropout == 0.0 and cfg.model.ch_mult == [1, 2] and cfg.data.random_flip is False
    assert cfg.training.n_iters == 7


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("training:\n  n_iters: [1,\n")
    with pytest.raises(DDIMError, match=r"broken\.yml: not valid YAML at line \d+"):
        load_yaml(path)


def _flags(*argv):
    return config_from_args(add_train_arguments(argparse.ArgumentParser()).parse_args(list(argv)))


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], r"^optim\.lr must be a finite number, got inf$"),
    (["--lr", "nan"], r"^optim\.lr must be a finite number, got nan$"),
    (["--dropout", "1.0"], r"^model\.dropout must lie in \[0, 1\), got 1\.0$"),
    (["--n-samples", "0"], r"^training\.n_samples must be >= 1, got 0$"),
    (["--sample-steps", "0"], r"^training\.sample_steps must lie in \[1, diffusion\.num_diffusion_timesteps = 1000\]"),
    (["--sample-steps", "1001"], r"^training\.sample_steps must lie in \[1, "),
    (["--seed", "-1"], r"^training\.seed must lie in \[0, 2\*\*32\), got -1$"),
    (["--adam-beta1", "1.5"], r"^optim\.beta1 must lie in \[0, 1\)"),
    (["--dataset", "bogus"], r"^data\.dataset must be one of digits, cifar10, celeba, folder, npz, idx .*got 'bogus'$"),
    (["--dataset", "npz"], r"^data\.root is required for dataset 'npz'"),
    (["--beta-schedule", "sigmoid"], r"^diffusion: beta_schedule must be one of"),
    (["--beta-start", "0.5", "--beta-end", "0.1"], r"^diffusion: betas must be non-decreasing"),
    (["--device", "gpu"], r"^device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps$"),
])
def test_flags_that_cannot_work_are_refused_when_the_config_is_built(argv, message):
    with pytest.raises(DDIMError, match=message):
        _flags(*argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(DDIMError, match=r"^device 'cuda': CUDA is not available here .*use --device cpu$"):
        _flags("--device", "cuda")


def test_validate_type_checks_configs_built_in_python():
    with pytest.raises(DDIMError, match=r"^training\.n_iters must be an integer, got true \(bool\)$"):
        TrainConfig(training=TrainingConfig(n_iters=True)).validate()


def test_help_names_packaged_configs_that_load_by_name(capsys):
    import tomllib
    from ddim.commands import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "configs/" not in text and "--config digits" in text        # no path the installed wheel lacks
    assert {"digits", "digits_cond", "cifar10"} <= set(PACKAGED_CONFIGS)
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*.yml" in package_data["ddim"] and PACKAGED_CONFIGS_DIR == REPO / "ddim" / "configs"
    by_name = config_from_args(add_train_arguments(argparse.ArgumentParser()).parse_args(["--config", "digits"]))
    assert by_name == load_yaml(PACKAGED_CONFIGS_DIR / "digits.yml").validate()
    assert load_yaml("digits_cond.yml").model.num_classes == 10
    with pytest.raises(DDIMError, match=r"config file 'nope' does not exist .*packaged config: cifar10, digits"):
        load_yaml("nope")


# --- SampleConfig ------------------------------------------------------------------------------------------------
def test_sample_config_hands_the_sampler_its_walk_options_and_records_what_changes_the_images():
    import inspect
    from ddim.sampling import DDIMSampler
    cfg = SampleConfig(steps=3, skip=[0, 10, 20], eta=1, batch_size=3, compile=True)
    assert cfg.skip == (0, 10, 20) and type(cfg.eta) is float                 # normalised when built
    walk = cfg.walk_options()
    assert set(walk) <= set(inspect.signature(DDIMSampler.sample).parameters)
    assert list(walk["skip"]) == [0, 10, 20] and walk["eta"] == 1.0
    manifest = cfg.manifest()
    assert not {"batch_size", "compile", "channels_last", "cache_branch"} & set(manifest)   # speed only
    assert manifest["skip"] == [0, 10, 20] and manifest["seed"] == 0
    named = SampleConfig(steps=7)
    assert named.replace(steps=9).steps == 9 and named.steps == 7              # a copy, frozen original
    with pytest.raises(DDIMError, match="steps"):
        named.replace(steps=0)                                                 # validated again
