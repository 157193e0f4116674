"""The tiny random Stable Diffusion pipeline the latent tests share, built as diffusers' own pipeline tests build
theirs (nothing downloaded): a small UNet2DConditionModel, AutoencoderKL (32x32 RGB images <-> 4x16x16 latents),
CLIPTextModel and a CLIPTokenizer from a vocabulary written here."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
WORDS = ["a", "cat", "dog", "photo", "of", "the", "red", "blue"]


def tokenizer(folder):
    """A CLIP tokenizer from a small vocabulary written here: characters, the words above, and their merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for w in WORDS:                    # merge each word left to right: "c a", "ca t</w>"
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     pad_token="<|endoftext|>", model_max_length=16)
    return tok


def components(tmp_path, prediction="epsilon"):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16,
                                          in_channels=4, out_channels=4, norm_num_groups=2, cross_attention_dim=32,
                                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=2).eval()
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=16)).eval()
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(tmp_path / "vocab"),
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)




def save_pipeline(tmp_path, prediction="epsilon"):
    """The parts and the folder (tmp_path / "pipe") of a saved StableDiffusionPipeline."""
    parts = components(tmp_path, prediction)
    folder = tmp_path / "pipe"
    diffusers.StableDiffusionPipeline(**parts).save_pretrained(folder)
    return parts, folder
