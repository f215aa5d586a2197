#!/usr/bin/env python3
"""Generate tests/data/x4_upscaler_tiny/: a tiny, randomly initialised Stable Diffusion x4 upscaler in the real
Hugging Face folder layout (stabilityai/stable-diffusion-x4-upscaler: StableDiffusionUpscalePipeline) and the outputs
that the real diffusers 0.29.2 / transformers code computes for it (CPU, float32, 1 thread).

    REF_SRC=/opt/ref-src /usr/bin/python3 tools/refgen/make_upscaler_set.py [--out tests/data/x4_upscaler_tiny] [--check-determinism]

Every random draw inside the pipeline (the noise that low_res_scheduler.add_noise puts on the low-res image, then the
initial latents) comes from diffusers' randn_tensor, which the shared noise injector replaces by stored noise.
It reuses the shared SD 1.x generator (make_sets.py) by import: paths/stubs, the noise injector, PipeRecorder,
save_ref, randomize_, smooth_image.  The tokenizer vocabulary/merges are those of ../shared/conformance/sd_tiny.
See tools/refgen/README.md and the README.md that this script writes into the set.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refgen_common as C  # noqa: E402
from refgen_common import REPO, SD_TINY_REL, jsonable, sd_tiny_dir, sha256, write_json  # noqa: E402

REFGEN_DIR = C.refgen_dir()
M = C.make_sets()  # paths/stubs set up, noise injector installed (before torch / diffusers are imported here)
from make_sets import NOISE, f32, gen, randn  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import diffusers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

assert diffusers.__version__ == "0.29.2", diffusers.__version__

GEN = "tools/refgen/make_upscaler_set.py"
SET_NAME = "x4_upscaler_tiny"
SEED = 5150
REF_VERSIONS = {
    "diffusers": "0.29.2 (tag v0.29.2, c586aadef6bb66d355fa40a2b95a0bea8a6fe79c)",
    "transformers": "4.39.0.dev0 (duyy97/transformers ebebfbf58043b749f47a2f701a161f0c12e5f107)",
    "huggingface_hub": "0.23.4 (tag v0.23.4, 4c7aa33bac0b4fb59796e76fcc9cd7f5ff0fd426)",
}

# ------------------------------------------------------------------------------------------------
# tiny configs (the real stabilityai/stable-diffusion-x4-upscaler values in comments; the original LDM config is
# Stability-AI/stablediffusion configs/stable-diffusion/x4-upscaling.yaml)
# ------------------------------------------------------------------------------------------------
VOCAB = 1000  # the tiny BPE of the SD 1.x conformance set (its vocab.json / merges.txt are reused)

# text_encoder: OpenCLIP ViT-H text tower as SD 2.x stores it (1024 hidden, 23 layers = "penultimate", 16 heads,
# gelu, bos 0 / eos 2 / pad 1 as in the real config.json)
TE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
          max_position_embeddings=77, hidden_act="gelu", projection_dim=32, bos_token_id=0, eos_token_id=2,
          pad_token_id=1)

UNET = dict(
    sample_size=16,  # 128
    in_channels=7,  # 4 latent + 3 image channels
    out_channels=4,
    layers_per_block=2,  # 2
    # (256, 512, 512, 1024): model_channels 256, channel_mult [1, 2, 2, 4]; the tiny one keeps the set under ~3 MB
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=(True, True, True, False),  # LDM disable_self_attentions [True, True, True, False]
    attention_head_dim=8,  # 8 (LDM num_heads 8): the number of heads, despite the name
    cross_attention_dim=32,  # 1024
    use_linear_projection=True,  # True
    num_class_embeds=1000,  # 1000 (LDM num_classes: the noise level is the class label)
    class_embed_type=None,
    norm_num_groups=4,  # 32
    flip_sin_to_cos=True,
    freq_shift=0,
)
# VAE: 3 levels as the real one (ch 128, ch_mult [1, 2, 4] -> (128, 256, 512)), so vae_scale_factor = 4
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
           latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.08333)

# scheduler/ and low_res_scheduler/ scheduler_config.json as in the hub folder (diffusers 0.8.0 era): written
# verbatim over what save_pretrained writes.  Values agree with the LDM config (parameterization "v",
# linear_start 0.0001, linear_end 0.02 for both the model and the low_scale noise schedule; LDM's "linear"
# schedule is diffusers' "scaled_linear").
SCHED_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
LOW_RES_SCHED_CONFIG = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_small",
}
MAX_NOISE_LEVEL = 350

PROMPT = "a red circle"
PROMPT_2 = "a photo of a cat sitting on a wooden table"
NEG = "blurry, low quality"
# pipeline runs: low-res input size (h, w) of the stored [0,1] image; the output is 4x the preprocessed size
RUNS = [
    dict(name="upscale", prompt=PROMPT, negative_prompt=None, guidance_scale=9.0, noise_level=20,
         num_inference_steps=4, in_hw=(16, 24),
         what="the main run, with CFG; negative_prompt None is encoded as \"\""),
    dict(name="upscale_nocfg", prompt=PROMPT, negative_prompt=None, guidance_scale=1.0, noise_level=100,
         num_inference_steps=4, in_hw=(16, 24),
         what="no CFG (guidance_scale 1): UNet batch 1, no negative prompt encoded"),
    dict(name="upscale_6steps", prompt=PROMPT_2, negative_prompt=NEG, guidance_scale=9.0, noise_level=350,
         num_inference_steps=6, in_hw=(10, 18),
         what="another step count, a negative prompt text, noise_level 350 (= max_noise_level), and an input that "
              "the image processor cuts down to 8x16 (nearest resize to a multiple of vae_scale_factor 4; "
              "output 32x64)"),
]
OUT_ITEMS = ["model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler",
             "reference", "README.md"]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def save_ref(path, tensors, meta=None):
    M.save_ref(path, tensors, dict(meta or {}, generator=GEN))


def sched_info(s, prefix="scheduler"):
    cfg = dict(s.config)
    if "_use_default_values" in cfg:  # a set in diffusers: its order changes from process to process
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    d = {prefix + "_class": type(s).__name__, prefix + "_config": jsonable(cfg)}
    if getattr(s, "num_inference_steps", None) is not None:
        d[prefix + "_timesteps"] = s.timesteps.tolist()
        d[prefix + "_timesteps_dtype"] = str(s.timesteps.dtype).replace("torch.", "")
    return d


def load_pipe(d):
    p = diffusers.StableDiffusionUpscalePipeline.from_pretrained(d)
    p.set_progress_bar_config(disable=True)
    return p


def dir_bytes(p):
    if os.path.isfile(p):
        return os.path.getsize(p)
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, dn, fn in os.walk(p) for f in fn)


# ------------------------------------------------------------------------------------------------
# building the folder
# ------------------------------------------------------------------------------------------------


def build(d, seed):
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    src = os.path.join(sd_tiny_dir(), "tokenizer")
    # SD 2.x tokenizers pad with "!" (id 0 in this vocabulary too: the byte symbols come first)
    tok = CLIPTokenizer(os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt"), model_max_length=77,
                        pad_token="!")
    te = CLIPTextModel(CLIPTextConfig(**TE))
    M.randomize_(te, seed)
    unet = UNet2DConditionModel(**UNET)
    M.randomize_(unet, seed + 1)
    vae = AutoencoderKL(**VAE)
    M.randomize_(vae, seed + 2)
    p = diffusers.StableDiffusionUpscalePipeline(
        vae=vae.eval(), text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
        low_res_scheduler=DDPMScheduler.from_config(LOW_RES_SCHED_CONFIG),
        scheduler=DDIMScheduler.from_config(SCHED_CONFIG), max_noise_level=MAX_NOISE_LEVEL)
    p.save_pretrained(d)
    for sub, cfg in [("scheduler", SCHED_CONFIG), ("low_res_scheduler", LOW_RES_SCHED_CONFIG)]:
        with open(os.path.join(d, sub, "scheduler_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    # VAE weights with the pre-0.14 attention names (query/key/value/proj_attn), as in diffusers folders converted
    # before diffusers 0.14 (the x4 upscaler folder dates from 0.8.0); diffusers renames them at load time
    n = M.to_legacy_vae_attention_names(os.path.join(d, "vae"))
    assert n == 16, n
    with open(os.path.join(d, "model_index.json")) as f:
        mi = json.load(f)
    assert mi["_class_name"] == "StableDiffusionUpscalePipeline" and mi["max_noise_level"] == MAX_NOISE_LEVEL, mi
    return {"tokenizer_source": {f: sha256(os.path.join(src, f)) for f in ["vocab.json", "merges.txt"]},
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "n_params": {"unet": sum(x.numel() for x in unet.parameters()),
                         "vae": sum(x.numel() for x in vae.parameters()),
                         "text_encoder": sum(x.numel() for x in te.parameters())}}


# ------------------------------------------------------------------------------------------------
# component references
# ------------------------------------------------------------------------------------------------


Hooks = C.input_hooks(M)  # make_sets' output hooks + forward-input hooks


ONLY_CROSS_ATTN1 = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"  # only_cross_attention=True block
SELF_ATTN1 = "down_blocks.3.attentions.0.transformer_blocks.0.attn1"  # only_cross_attention=False block


def unet_hook_names(m):
    names = ["time_proj", "time_embedding", "class_embedding", "conv_in"]
    names += ["down_blocks.%d" % i for i in range(len(m.down_blocks))]
    names += ["mid_block"]
    names += ["up_blocks.%d" % i for i in range(len(m.up_blocks))]
    names += ["conv_norm_out", "conv_out", ONLY_CROSS_ATTN1, SELF_ATTN1]
    return names


def ref_unet(unet_dir, ref_path, seed):
    from diffusers import UNet2DConditionModel

    m = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    cfg = m.config
    g = gen(seed)
    sample = randn((2, cfg.in_channels, 16, 24), g)
    ehs = randn((2, 77, cfg.cross_attention_dim), g)
    sample_c = randn((1, cfg.in_channels, 12, 20), g)
    ehs_c = randn((1, 77, cfg.cross_attention_dim), g)
    t_a = torch.tensor(751, dtype=torch.int64)  # 0-d, as the pipeline passes it (broadcast to the batch)
    y_a = torch.tensor([20, 350], dtype=torch.int64)
    t_b = torch.tensor([981.0, 17.5], dtype=torch.float32)  # one per sample
    y_b = torch.tensor([0, 999], dtype=torch.int64)
    t_c = torch.tensor(251, dtype=torch.int64)
    y_c = torch.tensor([100], dtype=torch.int64)
    with torch.no_grad():
        hooks = Hooks(m, unet_hook_names(m), input_names=[ONLY_CROSS_ATTN1, SELF_ATTN1])
        out_a = m(sample, t_a, encoder_hidden_states=ehs, class_labels=y_a).sample
        rec = dict(hooks.rec)
        hooks.remove()
        out_b = m(sample, t_b, encoder_hidden_states=ehs, class_labels=y_b).sample
        hooks = M.Hooks(m, ["down_blocks.%d" % i for i in range(4)] + ["up_blocks.%d" % i for i in range(4)])
        out_c = m(sample_c, t_c, encoder_hidden_states=ehs_c, class_labels=y_c).sample
        rec_c = dict(hooks.rec)
        hooks.remove()
    tens = {"sample": sample, "encoder_hidden_states": ehs, "timestep_a": t_a, "class_labels_a": y_a, "out_a": out_a,
            "timestep_b": t_b, "class_labels_b": y_b, "out_b": out_b,
            "sample_c": sample_c, "encoder_hidden_states_c": ehs_c, "timestep_c": t_c, "class_labels_c": y_c,
            "out_c": out_c}
    for k, v in rec.items():
        tens["inter_a." + k] = v
    # the embedding every resnet sees: time_embedding(time_proj(t)) + class_embedding(class_labels)
    tens["inter_a.emb"] = rec["time_embedding"] + rec["class_embedding"]
    for k, v in rec_c.items():
        tens["inter_c." + k] = v
    meta = {
        "calls": {"out_a": "unet(sample, timestep_a, encoder_hidden_states, class_labels=class_labels_a)",
                  "out_b": "unet(sample, timestep_b, encoder_hidden_states, class_labels=class_labels_b)",
                  "out_c": "unet(sample_c, timestep_c, encoder_hidden_states_c, class_labels=class_labels_c)"},
        "inter_a": "module outputs during the out_a call; input.<module> = the module's first positional input; "
                   "inter_a.emb = inter_a.time_embedding + inter_a.class_embedding (exactly what the blocks get)",
        "attn1_modules": {ONLY_CROSS_ATTN1: "only_cross_attention=True: attn1 attends to encoder_hidden_states",
                          SELF_ATTN1: "only_cross_attention=False: attn1 is self-attention"},
        "case_c": "12x20 is not a multiple of 2**num_upsamplers = 8: down path 12x20 -> 6x10 -> 3x5 -> 2x3 (stride-2 "
                  "conv, pad 1: ceil(n/2)); diffusers then forwards upsample_size, so each upsampler "
                  "nearest-resizes to the size of the skip it is concatenated with (2x3 -> 3x5 -> 6x10 -> 12x20) "
                  "instead of x2. inter_c.* are the block outputs.",
        "shapes": {k: list(v.shape) for k, v in sorted(tens.items())},
    }
    save_ref(ref_path, tens, {"note": "see unet_io.json"})
    write_json(ref_path.replace(".safetensors", ".json"), dict({"generator": GEN}, **meta))
    return {"out_a_absmax": float(out_a.abs().max()), "out_c_absmax": float(out_c.abs().max()),
            "inter_c_up_shapes": [list(rec_c["up_blocks.%d" % i].shape) for i in range(4)]}


def ref_vae(vae_dir, ref_path, seed):
    from diffusers import AutoencoderKL

    m = AutoencoderKL.from_pretrained(vae_dir).eval()
    f = 2 ** (len(m.config.block_out_channels) - 1)
    g = gen(seed)
    image = torch.rand((1, 3, 32, 48), generator=g) * 2.0 - 1.0
    z = randn((1, m.config.latent_channels, 32 // f, 48 // f), g)
    with torch.no_grad():
        h = M.Hooks(m, ["encoder.mid_block", "quant_conv"])
        dist = m.encode(image).latent_dist
        rec_e = dict(h.rec)
        h.remove()
        h = M.Hooks(m, ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0"])
        dec = m.decode(z).sample
        rec_d = dict(h.rec)
        h.remove()
    tens = {"image": image, "latent_mean": dist.mean, "latent_logvar": dist.logvar, "latent_std": dist.std,
            "z": z, "decoded": dec}
    for k, v in rec_e.items():
        tens["inter_enc." + k] = v
    for k, v in rec_d.items():
        tens["inter_dec." + k] = v
    meta = {"generator": GEN, "downscale": f,
            "calls": {"latent_*": "vae.encode(image).latent_dist (mean, logvar clamped to [-30, 20], std = "
                                  "exp(0.5*logvar)); no scaling_factor applied",
                      "decoded": "vae.decode(z).sample (no scaling_factor applied; the pipeline decodes "
                                 "latents / scaling_factor)"},
            "weights": "vae/diffusion_pytorch_model.safetensors has the legacy attention names "
                       "(mid_block.attentions.0.query/key/value/proj_attn)",
            "shapes": {k: list(v.shape) for k, v in sorted(tens.items())}}
    save_ref(ref_path, tens, {"note": "see vae_io.json"})
    write_json(ref_path.replace(".safetensors", ".json"), meta)
    return {"decoded_absmax": float(dec.abs().max()), "downscale": f}


# ------------------------------------------------------------------------------------------------
# pipeline runs
# ------------------------------------------------------------------------------------------------


def run_upscale(d, ref_dir, run, seed, store_constants=False):
    p = load_pipe(d)
    g = gen(seed)
    h, w = run["in_hw"]
    image = M.smooth_image(g, h, w)  # NHWC float32 in [0, 1], as a numpy array
    f = p.vae_scale_factor
    ph, pw = h - h % f, w - w % f  # what VaeImageProcessor.preprocess makes of it
    noise_lr = randn((1, 3, ph, pw), g)
    noise_lat = randn((1, p.vae.config.latent_channels, ph, pw), g)
    NOISE.set_queue([noise_lr, noise_lat])
    rec = M.PipeRecorder(p)
    low = {}
    orig_add_noise = p.low_res_scheduler.add_noise

    def add_noise(original_samples, noise, timesteps):
        out = orig_add_noise(original_samples, noise, timesteps)
        low.update(image=f32(original_samples), noise=f32(noise), noise_level=timesteps.clone(), out=f32(out))
        return out

    p.low_res_scheduler.add_noise = add_noise
    steps = {"model_output": [], "pred_original_sample": [], "prev_sample": []}
    orig_step = p.scheduler.step

    def step(model_output, timestep, sample, *a, **k):
        rd = k.pop("return_dict", True)
        o = orig_step(model_output, timestep, sample, *a, return_dict=True, **k)
        steps["model_output"].append(f32(model_output))
        steps["pred_original_sample"].append(f32(o.pred_original_sample))
        steps["prev_sample"].append(f32(o.prev_sample))
        return o if rd else (o.prev_sample,)

    p.scheduler.step = step
    after = []

    def cb(i, t, latents):
        after.append(f32(latents))

    kw = dict(prompt=run["prompt"], image=image, num_inference_steps=run["num_inference_steps"],
              guidance_scale=run["guidance_scale"], noise_level=run["noise_level"],
              negative_prompt=run["negative_prompt"], eta=0.0, output_type="np", callback=cb, callback_steps=1)
    with torch.no_grad():
        img = p(**kw).images
    rec.restore()
    del p.scheduler.step
    del p.low_res_scheduler.add_noise
    assert not NOISE.queue, "not all injected noise was used"
    assert [e.get("shape") for e in NOISE.log] == [list(noise_lr.shape), list(noise_lat.shape)], NOISE.log
    assert np.isfinite(img).all()
    t = rec.tensors()
    cfg_on = run["guidance_scale"] > 1.0
    n_b = 2 if cfg_on else 1
    S = len(after)
    # consistency of what was recorded (asserted, so that the json can state it)
    assert torch.equal(low["noise"], noise_lr)
    if (ph, pw) == (h, w):
        assert torch.equal(low["image"], torch.from_numpy(image).permute(0, 3, 1, 2) * 2.0 - 1.0)
    assert torch.equal(t["denoiser.sample"][:, :, 4:], low["out"].expand(n_b, -1, -1, -1)[None].expand(S, -1, -1, -1, -1))
    assert torch.equal(t["denoiser.sample"][0, :1, :4], noise_lat * p.scheduler.init_noise_sigma)
    assert torch.equal(t["denoiser.class_labels"], torch.full((n_b,), run["noise_level"], dtype=torch.int64))
    assert torch.equal(torch.stack(steps["prev_sample"]), torch.stack(after))
    ehs = t["denoiser.encoder_hidden_states"]
    if cfg_on:
        assert torch.equal(ehs, torch.cat([t["text_encoder.1.last_hidden_state"], t["text_encoder.0.last_hidden_state"]]))
    else:
        assert torch.equal(ehs, t["text_encoder.0.last_hidden_state"]) and "text_encoder.1.input_ids" not in t
    dec_in = t["vae_decode.0.input"]
    sf = p.vae.config.scaling_factor
    assert torch.equal(dec_in, after[-1] / sf)
    dec_out = t["vae_decode.0.output"]
    assert torch.equal(torch.from_numpy(img), (dec_out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
    t.update({
        "image_in": torch.from_numpy(image),
        "noise.0": noise_lr,
        "noise.1": noise_lat,
        "low_res.image_preprocessed": low["image"],
        "low_res.noise_level": low["noise_level"],
        "low_res.noised_image": low["out"],
        "scheduler_step.model_output": torch.stack(steps["model_output"]),
        "scheduler_step.pred_original_sample": torch.stack(steps["pred_original_sample"]),
        "latents_after_step": torch.stack(after),
        "image": torch.from_numpy(img),
    })
    acp_low = p.low_res_scheduler.alphas_cumprod
    acp = p.scheduler.alphas_cumprod
    if store_constants:
        t["low_res_scheduler.alphas_cumprod"] = acp_low
        t["scheduler.alphas_cumprod"] = acp
    nl = run["noise_level"]
    uncond = None
    if cfg_on:
        uncond = "\"\" (negative_prompt None)" if run["negative_prompt"] is None else run["negative_prompt"]
    # float32 division vs multiplication by the float32 reciprocal (for implementers)
    div_is_mul = bool(torch.equal(after[-1] / sf, after[-1] * torch.tensor(1.0 / sf, dtype=torch.float32)))
    meta = {
        "generator": GEN, "pipeline": "StableDiffusionUpscalePipeline", "what": run["what"],
        "call": "pipe(prompt, image=image_in, num_inference_steps, guidance_scale, noise_level, negative_prompt, "
                "eta=0.0, output_type='np', callback=<records latents_after_step>, callback_steps=1)",
        "prompt": run["prompt"], "negative_prompt": run["negative_prompt"], "uncond_text_encoded": uncond,
        "num_inference_steps": run["num_inference_steps"], "guidance_scale": run["guidance_scale"],
        "do_classifier_free_guidance": cfg_on, "noise_level": nl, "max_noise_level": p.config.max_noise_level,
        "eta": 0.0, "output_type": "np", "num_images_per_prompt": 1,
        "image_in_hw": [h, w], "image_preprocessed_hw": [ph, pw], "latent_hw": [ph, pw],
        "image_out_hw": list(img.shape[1:3]), "vae_scale_factor": f, "vae_scaling_factor": sf,
        "decode_input": "latents_after_step[-1] / vae_scaling_factor, a float32 division by float32(0.08333); "
                        "bit-identical to multiplying by float32(1/scaling_factor) here: %s" % div_is_mul,
        "init_noise_sigma": float(p.scheduler.init_noise_sigma),
        "class_labels": t["denoiser.class_labels"].tolist(),
        "low_res_alphas_cumprod_at_noise_level": float(acp_low[nl]),
        "low_res_sqrt_alpha_prod": float(acp_low[nl] ** 0.5),
        "low_res_sqrt_one_minus_alpha_prod": float((1 - acp_low[nl]) ** 0.5),
        "ddim_final_alpha_cumprod": float(p.scheduler.final_alpha_cumprod),
        "loop_timesteps": t["denoiser.timestep"].tolist(),
        "input_ids": {"prompt": t["text_encoder.0.input_ids"].tolist()[0],
                      "negative": t["text_encoder.1.input_ids"].tolist()[0] if cfg_on else None},
        "noise_order": [
            "noise.0 [1, 3, h, w]: randn_tensor(image.shape) in step 5; image = low_res_scheduler.add_noise("
            "image_preprocessed, noise.0, tensor([noise_level])) = low_res.noised_image",
            "noise.1 [1, 4, h, w]: the initial latents (prepare_latents: randn_tensor, then * init_noise_sigma = 1)",
            "no other draw: DDIM with eta = 0 draws nothing"],
        "recorded_identities (asserted)": [
            "denoiser.sample[i][:, 4:] == low_res.noised_image (repeated over the UNet batch)",
            "denoiser.sample[0][:1, :4] == noise.1 * init_noise_sigma",
            "denoiser.class_labels == [noise_level] * UNet batch (int64)",
            "denoiser.encoder_hidden_states == cat([text_encoder.1 (negative), text_encoder.0 (prompt)]) with CFG, "
            "text_encoder.0 without",
            "scheduler step i's prev_sample == latents_after_step[i]",
            "vae_decode.0.input == latents_after_step[-1] / vae_scaling_factor",
            "image == clamp(vae_decode.0.output / 2 + 0.5, 0, 1) as NHWC"],
    }
    if (ph, pw) == (h, w):
        meta["recorded_identities (asserted)"].append("low_res.image_preprocessed == 2 * image_in (NCHW) - 1")
    else:
        meta["preprocess_note"] = ("image_in is %dx%d: VaeImageProcessor.preprocess makes it %dx%d (multiples of "
                                   "vae_scale_factor %d, rounded down) with torch.nn.functional.interpolate(size=...) "
                                   "in its default mode 'nearest' (src index = floor(dst * in / out)), then 2x-1"
                                   % (h, w, ph, pw, f))
    meta.update(sched_info(p.scheduler, "scheduler"))
    meta.update(sched_info(p.low_res_scheduler, "low_res_scheduler"))
    if store_constants:
        meta["constants"] = "low_res_scheduler.alphas_cumprod and scheduler.alphas_cumprod [1000] (float32) are stored"
    if not store_constants:  # only the main run keeps the raw decoder output (size); image = its exact clamp
        del t["vae_decode.0.output"]
        meta["not_stored"] = "vae_decode.0.output (only upscale.safetensors has it): image is clamp(output/2+0.5, 0, 1)"
    path = os.path.join(ref_dir, run["name"] + ".safetensors")
    save_ref(path, t, {"pipeline": meta["pipeline"], "what": meta["what"], "note": "see %s.json" % run["name"]})
    write_json(path.replace(".safetensors", ".json"),
               jsonable(dict(meta, tensors={k: list(v.shape) for k, v in sorted(t.items())}, noise_calls=NOISE.log)))
    NOISE.clear()
    clamped = float(((img <= 0.0) | (img >= 1.0)).mean())
    return {"image_mean": float(img.mean()), "image_clamped_fraction": clamped,
            "latents_absmax": float(after[-1].abs().max()), "loop_timesteps": meta["loop_timesteps"],
            "image_out_hw": meta["image_out_hw"]}


# ------------------------------------------------------------------------------------------------
# determinism, README
# ------------------------------------------------------------------------------------------------


def file_hashes(root):
    res = {}
    for dp, dn, fn in os.walk(root):
        for f in fn:
            rel = os.path.relpath(os.path.join(dp, f), root)
            if rel.split(os.sep)[0] not in OUT_ITEMS or rel in ("README.md", os.path.join("reference", "generation_info.json")):
                continue
            res[rel] = sha256(os.path.join(dp, f))
    return res


def compare_tensors(a_root, b_root):
    """max |diff| and max |diff| / max(1, max|ref|) over every float tensor of every .safetensors under a_root."""
    worst_abs, worst_rel, per_file = 0.0, 0.0, {}
    for dp, dn, fn in os.walk(a_root):
        for f in sorted(fn):
            if not f.endswith(".safetensors"):
                continue
            rel = os.path.relpath(os.path.join(dp, f), a_root)
            ta, tb = load_file(os.path.join(a_root, rel)), load_file(os.path.join(b_root, rel))
            fa, fr, wk, img = 0.0, 0.0, None, None
            for k, v in ta.items():
                assert k in tb and tb[k].shape == v.shape, (rel, k)
                if not v.dtype.is_floating_point or not v.numel():
                    assert torch.equal(v, tb[k]), (rel, k)
                    continue
                dd = float((v.double() - tb[k].double()).abs().max())
                if dd > fa or wk is None:
                    fa, wk = max(fa, dd), k
                fr = max(fr, dd / max(1.0, float(v.abs().max())))
                if k == "image" and "noise.0" in ta:  # the pipeline output (vae_io's `image` is an input)
                    img = dd
            per_file[rel] = {"max_abs": fa, "max_rel": fr, "max_abs_tensor": wk}
            if img is not None:
                per_file[rel]["image_max_abs"] = img
            worst_abs, worst_rel = max(worst_abs, fa), max(worst_rel, fr)
    return worst_abs, worst_rel, per_file


def rerun_threads(out, threads):
    tmp = tempfile.mkdtemp(prefix="x4_refgen_t%d_" % threads)
    try:
        env = dict(os.environ, REFGEN_THREADS=str(threads))
        subprocess.run([sys.executable, os.path.abspath(__file__), "--out", tmp], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        a, r, per = compare_tensors(out, tmp)
        return {"torch_threads": threads, "max_abs_diff": a, "max_rel_diff": r, "per_file": per}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tree_lines(out):
    lines = []
    for dp, dn, fn in os.walk(out):
        dn.sort()
        rel = os.path.relpath(dp, out)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        if rel != ".":
            lines.append("  " * (depth - 1) + os.path.basename(dp) + "/")
        for f in sorted(fn):
            lines.append("%s%s  (%s bytes)" % ("  " * depth, f, format(os.path.getsize(os.path.join(dp, f)), ",")))
        if rel == ".":
            lines.insert(0, "README.md  (this file)")
        elif rel == "reference":
            lines.append("  generation_info.json")
    return lines


ALGORITHM = r"""
`pipe(prompt, image, num_inference_steps=N, guidance_scale=g, noise_level=L, negative_prompt=neg, eta=0,
output_type="np")` in diffusers 0.29.2 (`pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py`), batch 1,
`num_images_per_prompt` 1, all float32:

1. **Checks**: `L <= max_noise_level` (350, from `model_index.json`), else an error.
2. **Text**: `do_cfg = g > 1`. `ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`
   (this tokenizer pads with `"!"` = id 0, as SD 2.x tokenizers do); `pos = text_encoder(ids)[0]`
   (`last_hidden_state`, after `final_layer_norm`, no attention mask, `clip_skip` None). With CFG the negative
   prompt (`""` when None) is tokenized the same way and encoded: `neg`. `prompt_embeds = cat([neg, pos])`
   (**uncond first**), else `pos` alone. Text encoder calls: prompt first, then the negative.
3. **Image preprocess** (`VaeImageProcessor(vae_scale_factor=4)`, `do_normalize`): NHWC numpy in [0,1] -> NCHW;
   height and width are rounded **down to a multiple of vae_scale_factor = 2**(len(vae.block_out_channels)-1) = 4**
   and the image is resized to that with `F.interpolate(size=...)` (mode `nearest`; a no-op when the size is already
   a multiple of 4); then `x = 2*x - 1` (skipped, with a warning, if the input already has negative values).
   PIL inputs are resized with bicubic resampling instead.
4. `scheduler.set_timesteps(N)` (DDIM, `leading` spacing, `steps_offset` 1: `t_i = (N-1-i) * (1000 // N) + 1`,
   e.g. 751, 501, 251, 1 for N = 4).
5. **Noise augmentation of the low-res image** (rng draw #1): `noise = randn(image.shape)` [1,3,h,w];
   `image = low_res_scheduler.add_noise(image, noise, tensor([L]))` =
   `sqrt(acp_low[L]) * image + sqrt(1 - acp_low[L]) * noise`, where `acp_low` = float32 cumprod of
   `1 - betas`, `betas = linspace(sqrt(1e-4), sqrt(0.02), 1000, float32)**2` (DDPMScheduler, `scaled_linear`).
   Then `image = cat([image] * (2 if do_cfg else 1))` and `class_labels = cat([tensor([L])] * image.shape[0])`
   (int64, one per UNet batch row).
6. **Latents** (rng draw #2): at the **low-res (preprocessed) size**, `latents = randn([1, 4, h, w]) *
   scheduler.init_noise_sigma` (1.0 for DDIM). 4 latent + 3 image channels = `unet.in_channels` 7 (checked).
7. **Loop**, for each `t`:
   `x = cat([latents]*2) if do_cfg else latents`; `x = scheduler.scale_model_input(x, t)` (identity for DDIM);
   `x = cat([x, image], dim=1)` (**latents first, then the noised low-res image; the image is not scaled**);
   `v = unet(x, t, encoder_hidden_states=prompt_embeds, class_labels=class_labels)` (`t` a 0-d int64 tensor,
   broadcast to the batch); with CFG `v_u, v_c = v.chunk(2)`; `v = v_u + g * (v_c - v_u)`;
   `latents = scheduler.step(v, t, latents, eta=0)`: DDIM with `prediction_type v_prediction`:
   `a_t = acp[t]`, `a_prev = acp[t - 1000//N]` or `final_alpha_cumprod = acp[0]` when that is < 0
   (`set_alpha_to_one` false), `x0 = sqrt(a_t) * latents - sqrt(1 - a_t) * v`,
   `eps = sqrt(a_t) * v + sqrt(1 - a_t) * latents`, `latents = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps`
   (`clip_sample` false, no thresholding; `acp` from scaled_linear 1e-4..0.02 like `acp_low`).
8. **Decode**: `img = vae.decode(latents / vae.config.scaling_factor)` with `scaling_factor` 0.08333, a division
   (multiplying by the reciprocal differs in the last bit; see `decode_input` in the run JSONs) (the pipeline
   forces 0.08333 into the VAE config with a deprecation warning if the config has another value). The upcast
   (`needs_upcasting = vae.dtype == float16 and vae.config.force_upcast`) only matters for fp16 VAEs; the VAE is
   float32 here. No safety checker, no watermarker.
9. **Postprocess** (`output_type="np"`): `clamp(img / 2 + 0.5, 0, 1)`, NCHW -> NHWC float32 (`image`); "pil" would
   then round `x * 255` to uint8. The output is 4x the preprocessed low-res size.

rng draws, in order: `noise.0` (low-res image noise, shape of the preprocessed image), `noise.1` (initial latents).
Nothing else draws (DDIM with eta 0 does not; passing `latents=` skips draw #2 but not draw #1).
"""

GOTCHAS = r"""
* **`only_cross_attention`** (`[true, true, true, false]`, from LDM's `disable_self_attentions`): in those
  transformer blocks `attn1` is a *cross*-attention over `encoder_hidden_states` (its `to_k`/`to_v` take
  `cross_attention_dim` inputs) and `attn2` is the usual cross-attention too; there is no self-attention. The list
  goes per down block and is **reversed for the up blocks** (`[false, true, true, true]`: the first up block,
  at the lowest resolution, has normal self-attention). The mid block always uses self-attention
  (`mid_block_only_cross_attention` is false when `only_cross_attention` is a list). `unet_io` records the input
  and output of one `attn1` of each kind.
* **Noise level as class label**: `num_class_embeds` 1000, `class_embed_type` null -> `class_embedding` is an
  `nn.Embedding(1000, time_embed_dim)` table; `emb = time_embedding(time_proj(t)) + class_embedding[class_labels]`
  (`class_embeddings_concat` false). Stored as `inter_a.class_embedding` and `inter_a.emb`.
* `attention_head_dim` 8 means **8 heads** in every attention block (head_dim = channels / 8; 2 in this tiny
  model). `use_linear_projection` true: `proj_in`/`proj_out` are Linear layers applied after the NCHW -> (B, HW, C)
  reshape.
* The UNet downsamples 3 times (factor 8) but the image processor only rounds to multiples of 4. A low-res size
  that is 4 mod 8 therefore takes diffusers' `upsample_size` path: the down convs give ceil(n/2) and every up
  block's upsampler nearest-resizes to its skip's size instead of x2. `unet_io` case c (12x20) covers it; the
  pipeline runs (latents 16x24 and 8x16) do not.
* The VAE has **3 levels** (vae_scale_factor 4, like the real 128/256/512 one), `scaling_factor` 0.08333, and its
  weights use the legacy attention names (`query`/`key`/`value`/`proj_attn`). Its mid block has attention (LDM's
  `attn_resolutions: []` only concerns the up/down levels).
* The text encoder uses `gelu` (erf), `eos_token_id` 2 (pooling at `argmax(input_ids)`; the pooled output is not
  used by this pipeline) and the tokenizer pads with `"!"` (id 0), not `<|endoftext|>`.
* `noise_level` (class label, 0..350) and the DDIM timestep are independent integers; the low-res noise uses the
  `low_res_scheduler` (DDPM) table, the loop uses the `scheduler` (DDIM) table. Both are scaled_linear 1e-4..0.02
  here, so the two `alphas_cumprod` arrays are equal (both are stored in `upscale.safetensors`).
"""


def write_readme(out, info):
    v = {k: x for k, x in info["versions"].items() if x is not None}  # the *_commit entries are None: the trees
    vers = "\n".join("* `%s`: `%s`" % (k, v[k]) for k in v)  # are git-archive exports (commits listed below)
    refs = "\n".join("* %s: %s" % (k, s) for k, s in REF_VERSIONS.items())
    det = info["determinism"]
    if isinstance(det, dict):
        t2 = det.get("rerun_2_threads")
        det_txt = "* rerun in a new process, same thread count (1): %s\n" % det["rerun_same_threads"]
        if t2:
            worst = sorted(t2["per_file"].items(), key=lambda kv: -kv[1]["max_abs"])
            det_txt += ("* rerun with 2 torch threads: max |diff| over all reference tensors = %.3g, max |diff| / "
                        "max(1, max|ref|) per tensor = %.3g. Per file (max abs / rel): %s\n"
                        % (t2["max_abs_diff"], t2["max_rel_diff"],
                           "; ".join("`%s` %.2g / %.2g%s%s" % (
                               k, x["max_abs"], x["max_rel"],
                               " (in `%s`)" % x["max_abs_tensor"] if x["max_abs"] else "",
                               ", `image` %.2g" % x["image_max_abs"] if "image_max_abs" in x else "")
                               for k, x in worst)))
    else:
        det_txt = "* %s\n" % det
    sizes = info["bytes"]
    size_txt = "\n".join("* `%s`: %s bytes" % (k, format(b, ",")) for k, b in sizes.items())
    size_txt += "\n* total: %s bytes (%.2f MB)" % (format(sum(sizes.values()), ","), sum(sizes.values()) / 1e6)
    runs = "\n".join("  * `%s`: %s. Prompt %s, negative_prompt %s, %d steps, guidance %g, noise_level %d, input %dx%d."
                     % (r["name"], r["what"], json.dumps(r["prompt"]), json.dumps(r["negative_prompt"]),
                        r["num_inference_steps"], r["guidance_scale"], r["noise_level"], r["in_hw"][0], r["in_hw"][1])
                     for r in RUNS)
    cfgs = json.dumps(jsonable(info["configs"]), indent=1)
    text = """# Diffusers reference set: x4_upscaler_tiny (StableDiffusionUpscalePipeline)

A tiny, randomly initialised Stable Diffusion x4 upscaler saved in the **real Hugging Face layout** of
`stabilityai/stable-diffusion-x4-upscaler` (`model_index.json` with `max_noise_level` 350, `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/` (DDIM, v-prediction), `low_res_scheduler/` (DDPM)), plus reference
outputs computed by the real diffusers 0.29.2 / transformers Python code (CPU, float32, 1 thread). Made by
`{gen}` (see `tools/refgen/README.md`); nothing here is needed to build stipple.

## Versions used

{vers}

Reference sources (`$REF_SRC`, trees made with `git archive`):
{refs}

torch is Debian bookworm's `python3-torch 1.13.1+dfsg-4` (reports `1.13.0a0`), run on the CPU with 1 thread.
`.safetensors` files are written and read by the shared numpy stand-in of the `safetensors` package (exact file
format). `tokenizers` and `ftfy` are not installed: the slow `CLIPTokenizer` (BasicTokenizer path) is recorded.
Every `randn_tensor` call inside diffusers returns stored noise (`noise.k` in the pipeline files), so the torch RNG
never has to be reproduced.

## Determinism and tolerances observed

{det}
Suggested acceptance for a float32 C++ implementation:
* single forwards (`unet_io`, `vae_io`): `max|ours-ref| <= 1e-4 * max(1, max|ref|)`;
* per-step pipeline tensors (`denoiser.out`, `scheduler_step.*`, `latents_after_step`): `<= 1e-3 * max(1, max|ref|)`;
  `vae_decode.0.input` is the latents times 12 (1/0.08333), so compare it relative to its own magnitude;
* final image (`image`, [0,1]): `<= 2e-3` absolute; token ids, timesteps and class labels: exact.

## Layout

```
{tree}
```

Float tensors are F32, integer tensors (ids, timesteps, class labels, noise levels) I64. Each `.safetensors` under
`reference/` has a `.json` next to it with the run settings, the tensor shapes and the scheduler configs;
`reference/generation_info.json` holds the versions, configs, sizes, sha256 of every file and the determinism check.

### Model folders
* `model_index.json`: `StableDiffusionUpscalePipeline`, `max_noise_level` 350; `safety_checker`,
  `feature_extractor`, `watermarker` are `[null, null]`.
* `unet/`: `UNet2DConditionModel`, `in_channels` 7, `out_channels` 4, 4 levels `(DownBlock2D, CrossAttnDownBlock2D x3)`
  / `(CrossAttnUpBlock2D x3, UpBlock2D)` as the real one, `only_cross_attention [true, true, true, false]`,
  `attention_head_dim` 8, `use_linear_projection` true, `num_class_embeds` 1000, `class_embed_type` null,
  `cross_attention_dim` 32 (real 1024), `block_out_channels [8, 16, 16, 16]` (real [256, 512, 512, 1024]),
  `norm_num_groups` 4 (real 32), `layers_per_block` 2 (as the real one).
* `vae/`: `AutoencoderKL`, 3 levels `[8, 16, 16]` (real [128, 256, 512]), `layers_per_block` 2,
  `scaling_factor` 0.08333; legacy attention weight names.
* `text_encoder/`: `CLIPTextModel` (hidden 32, 3 layers, `gelu`, bos 0 / eos 2 / pad 1 like SD 2.x).
  `tokenizer/`: the vocabulary and merges of `{sd_tiny}/tokenizer` (1000 ids), padded with `"!"` (id 0).
* `scheduler/scheduler_config.json`: DDIMScheduler, scaled_linear 0.0001..0.02, `prediction_type v_prediction`,
  `steps_offset` 1, `set_alpha_to_one` false, `clip_sample` false (no `timestep_spacing` key: `leading`).
  `low_res_scheduler/scheduler_config.json`: DDPMScheduler, scaled_linear 0.0001..0.02 (epsilon, `fixed_small`).
  Both are written as in the hub folder (diffusers 0.8.0 keys), not as diffusers 0.29.2 would save them.

### `reference/`
* `unet_io.safetensors`: the UNet alone. `sample` [2,7,16,24], `encoder_hidden_states` [2,77,32]. Case a:
  `timestep_a` 0-d I64 751, `class_labels_a` [20, 350] -> `out_a`, with `inter_a.*` (`time_proj`, `time_embedding`,
  `class_embedding`, `emb` = their sum, `conv_in`, each down block, `mid_block`, each up block, `conv_norm_out`
  (before SiLU), `conv_out`, and input/output of an only-cross `attn1` and of a self `attn1`). Case b: F32
  timesteps [981, 17.5], labels [0, 999]. Case c: [1,7,12,20] (not a multiple of 8, see the gotchas), `inter_c.*`
  block outputs.
* `vae_io.safetensors`: `image` [1,3,32,48] in [-1,1] -> `latent_mean`, `latent_logvar`, `latent_std`
  ([1,4,8,12]); `z` [1,4,8,12] -> `decoded` [1,3,32,48]; a few intermediates. No scaling factor in this file.
* Pipeline runs (`<run>.safetensors` + `<run>.json`):
{runs}

  Each run holds: `image_in` (NHWC [0,1], as passed), `noise.0` / `noise.1` (the two rng draws),
  `low_res.image_preprocessed` ([-1,1], NCHW), `low_res.noise_level` [1], `low_res.noised_image` (output of
  `add_noise`), `text_encoder.k.input_ids` / `.last_hidden_state` (k = 0 prompt, 1 negative),
  `denoiser.sample` [steps, B, 7, h, w] (the exact UNet input), `denoiser.timestep`, `denoiser.timestep_as_passed`,
  `denoiser.encoder_hidden_states` [B,77,32], `denoiser.class_labels` [B], `denoiser.out` [steps, B, 4, h, w]
  (before guidance), `scheduler_step.model_output` (after guidance, what `scheduler.step` gets),
  `scheduler_step.pred_original_sample`, `latents_after_step` [steps, 1, 4, h, w], `vae_decode.0.input`
  (= latents / 0.08333), `vae_decode.0.output` [1,3,4h,4w] (the decoded image before clamping; only in
  `upscale.safetensors`) and `image` [1,4h,4w,3] (the `output_type="np"` result, `clamp(output/2+0.5, 0, 1)`
  NHWC, float in [0,1], before any uint8 conversion). `upscale.safetensors` also has `scheduler.alphas_cumprod`
  and `low_res_scheduler.alphas_cumprod` [1000].
* `generation_info.json`: versions, configs, sizes, sha256 of every file, determinism.

## Algorithm (what a reimplementation must do)
{algo}
## Gotchas
{gotchas}
## Configs used to build the models

```json
{cfgs}
```

## Sizes

{sizes}
""".format(gen=GEN, vers=vers, refs=refs, det=det_txt, tree="\n".join(tree_lines(out)), sd_tiny=SD_TINY_REL,
           runs=runs, algo=ALGORITHM, gotchas=GOTCHAS, cfgs=cfgs, sizes=size_txt)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def build_all(out):
    os.makedirs(out, exist_ok=True)
    for item in OUT_ITEMS:  # only what this script writes
        p = os.path.join(out, item)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    ref = os.path.join(out, "reference")
    s = {"build": build(out, SEED)}
    s["unet"] = ref_unet(os.path.join(out, "unet"), os.path.join(ref, "unet_io.safetensors"), SEED + 10)
    s["vae"] = ref_vae(os.path.join(out, "vae"), os.path.join(ref, "vae_io.safetensors"), SEED + 11)
    for k, run in enumerate(RUNS):
        s[run["name"]] = run_upscale(out, ref, run, SEED + 20 + k, store_constants=(k == 0))
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", SET_NAME))
    ap.add_argument("--check-determinism", action="store_true",
                    help="generate again in a new process (1 thread: must be bit-identical; 2 threads: differences "
                         "are measured) and record the results in README.md and generation_info.json")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    summary = build_all(out)
    det = "not checked (run with --check-determinism)"
    if args.check_determinism:
        det = {"rerun_same_threads": C.rerun_determinism([os.path.abspath(__file__)], out, file_hashes, "x4_refgen_"),
               "rerun_2_threads": rerun_threads(out, 2)}
    files = {}
    for rel, h in sorted(file_hashes(out).items()):
        files[rel] = {"bytes": os.path.getsize(os.path.join(out, rel)), "sha256": h}
    sizes = {item: dir_bytes(os.path.join(out, item)) for item in OUT_ITEMS if item != "README.md"
             and os.path.exists(os.path.join(out, item))}
    info = {"generator": GEN, "command": "REF_SRC=/opt/ref-src /usr/bin/python3 %s --check-determinism" % GEN,
            "reference_sources": REF_VERSIONS, "versions": M.versions(), "torch_threads": torch.get_num_threads(),
            "determinism": det, "bytes": sizes,
            "configs": {"text_encoder": TE, "unet": UNET, "vae": VAE, "scheduler": SCHED_CONFIG,
                        "low_res_scheduler": LOW_RES_SCHED_CONFIG, "max_noise_level": MAX_NOISE_LEVEL},
            "runs": RUNS, "summary": summary,
            "files (sha256; README.md and this file excluded)": files}
    write_readme(out, info)  # before generation_info.json, whose sizes do not include the README
    write_json(os.path.join(out, "reference", "generation_info.json"), jsonable(info))
    print(json.dumps(jsonable(summary), indent=1))
    print("determinism:", json.dumps(jsonable(det) if not isinstance(det, dict) else
                                     {k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items()
                                                                             if kk != "per_file"})
                                      for k, v in det.items()}, indent=1))
    print("bytes:", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
