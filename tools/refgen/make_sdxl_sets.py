#!/usr/bin/env python3
"""Generate the SDXL reference sets under tests/data/ (tiny random models in the real Hugging Face
layouts + the outputs that the real diffusers / transformers code computes for them).

    REF_SRC=/opt/ref-src /usr/bin/python3 tools/refgen/make_sdxl_sets.py [--out tests/data] [--check-determinism]

It reuses the SD 1.x conformance generator (make_sets.py of the shared refgen tools) by import:
paths/stubs setup, the noise injector that replaces diffusers' randn_tensor, PipeRecorder,
save_ref, write_json, the tiny BPE tokenizer, randomize_, ...  See tools/refgen/README.md.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refgen_common as C  # noqa: E402
from refgen_common import HERE, REPO, jsonable, sha256, shared_root  # noqa: E402,F401

REFGEN_DIR = C.refgen_dir()
M = C.make_sets(setup=False, noise=False)  # set up below, after the imports, as before
from make_sets import NOISE, f32, gen, randn  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

M._setup_paths()
M.install_noise_injector()
assert diffusers.__version__ == "0.29.2", diffusers.__version__

GEN = "tools/refgen/make_sdxl_sets.py"
SEED = 4242
REF_VERSIONS = {
    "diffusers": "0.29.2 (tag v0.29.2, c586aadef6bb66d355fa40a2b95a0bea8a6fe79c)",
    "transformers": "4.39.0.dev0 (duyy97/transformers ebebfbf58043b749f47a2f701a161f0c12e5f107)",
    "huggingface_hub": "0.23.4 (tag v0.23.4, 4c7aa33bac0b4fb59796e76fcc9cd7f5ff0fd426)",
}

# ------------------------------------------------------------------------------------------------
# tiny configs (real SDXL values in comments)
# ------------------------------------------------------------------------------------------------
VOCAB = 1000  # the same tiny BPE as the SD 1.x conformance set (make_tokenizer_files(d, 1000))

# text_encoder: CLIP ViT-L/14 text tower (768 hidden, 12 layers, quick_gelu)
TE1 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
           max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
# text_encoder_2: OpenCLIP bigG text tower (1280 hidden, 32 layers, gelu, projection 1280).  Hidden size differs
# from text_encoder's (as 1280 vs 768): diffusers' single-file loader tells the two encoders apart by it.  The
# projection is not square (40 -> 32) so that a missing transpose of text_projection cannot go unnoticed.
TE2 = dict(vocab_size=VOCAB, hidden_size=40, intermediate_size=48, num_hidden_layers=3, num_attention_heads=5,
           max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
# real SDXL text encoder configs carry bos 0 / eos 2 / pad 1 (eos_token_id == 2 -> transformers pools at
# input_ids.argmax(-1), i.e. at the first <|endoftext|> since it has the highest id)
TE_SPECIAL = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)

ADD_T = 8  # addition_time_embed_dim (256)
UNET_COMMON = dict(
    sample_size=8,  # 128
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(8, 16),  # (320, 640, 1280)
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),  # (5, 10, 20): number of heads, despite the name
    norm_num_groups=4,  # 32
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=ADD_T,
    flip_sin_to_cos=True,
    freq_shift=0,
)
UNET_BASE = dict(UNET_COMMON, transformer_layers_per_block=(1, 2),  # (1, 2, 10)
                 cross_attention_dim=TE1["hidden_size"] + TE2["hidden_size"],  # 768 + 1280 = 2048
                 projection_class_embeddings_input_dim=6 * ADD_T + TE2["projection_dim"])  # 6*256 + 1280 = 2816
# refiner: real one is 4 levels (384..1536), transformer_layers_per_block 4 (an int), cross_attention_dim 1280,
# projection_class_embeddings_input_dim 2560 = 5*256 + 1280
UNET_REFINER = dict(UNET_COMMON, transformer_layers_per_block=1,
                    cross_attention_dim=TE2["hidden_size"],
                    projection_class_embeddings_input_dim=5 * ADD_T + TE2["projection_dim"])
# VAE: 4 levels as the real one (128, 256, 512, 512), so vae_scale_factor = 8 and the
# diffusers->SGM conversion script (which hard-codes 4 levels) maps it right
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 8, 8, 8), layers_per_block=2,
           latent_channels=4, norm_num_groups=2, sample_size=64, scaling_factor=0.13025, force_upcast=True)

# scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0 (and of the refiner), verbatim
SDXL_SCHED_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

H, W = 64, 96  # image size of the pipeline runs (latent 8 x 12)
PROMPTS = ["a red circle", "A photo of an astronaut riding a horse on Mars, highly detailed"]
NEG_PROMPTS = ["blurry, low quality", "ugly"]
PROMPT = "a photo of a cat sitting on a wooden table"
NEG = "blurry, ugly"
STEPS = 4
GUIDANCE = 5.0
REFINER_STEPS = 10


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def save_ref(path, tensors, meta=None):
    M.save_ref(path, tensors, dict(meta or {}, generator=GEN))



def sched_info(s):
    cfg = dict(s.config)
    if "_use_default_values" in cfg:  # a set in diffusers: its order changes from process to process
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    d = {"scheduler_class": type(s).__name__, "scheduler_config": jsonable(cfg),
         "scheduler_timesteps": s.timesteps.tolist(),
         "scheduler_timesteps_dtype": str(s.timesteps.dtype).replace("torch.", "")}
    if getattr(s, "sigmas", None) is not None:
        d["scheduler_sigmas"] = [float(x) for x in s.sigmas]
    d["scheduler_order"] = int(getattr(s, "order", 1))
    return d


Hooks = C.input_hooks(M)  # make_sets' output hooks + forward-input hooks


class SDXLRecorder(M.PipeRecorder):
    """PipeRecorder for SDXL pipelines: also records text_encoder_2 and the UNet's added_cond_kwargs.

    text_encoder.{i}: input_ids, hidden_states_penultimate (= hidden_states[-2], what the pipeline uses); text_encoder_2.{i}: input_ids, text_embeds (the pooled projection), hidden_states_penultimate.
    Calls are numbered per encoder in call order (prompt first, then the negative prompt)."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.drop = set()
        self.rec["text_encoder_2"] = []
        if pipe.text_encoder_2 is not None:
            self._wrap(pipe.text_encoder_2, "forward", self._te2)

    def _te(self, a, k, out):
        ids = a[0] if a else k["input_ids"]
        self.rec["text_encoder"].append({"input_ids": ids.clone(), "hidden_states_penultimate": f32(out.hidden_states[-2])})

    def _te2(self, a, k, out):
        ids = a[0] if a else k["input_ids"]
        self.rec["text_encoder_2"].append({"input_ids": ids.clone(), "text_embeds": f32(out.text_embeds),
                                           "hidden_states_penultimate": f32(out.hidden_states[-2])})

    def _den(self, a, k, out):
        super()._den(a, k, out)
        ack = k["added_cond_kwargs"]
        self.rec["denoiser"][-1]["text_embeds"] = f32(ack["text_embeds"])
        self.rec["denoiser"][-1]["time_ids"] = f32(ack["time_ids"])

    def tensors(self):
        te = self.rec["text_encoder"]
        self.rec["text_encoder"] = []
        try:
            t = super().tensors()
        finally:
            self.rec["text_encoder"] = te
        for name in ["text_encoder", "text_encoder_2"]:
            for i, r in enumerate(self.rec[name]):
                for key, v in r.items():
                    t["%s.%d.%s" % (name, i, key)] = v
        den = self.rec["denoiser"]
        for key in ["text_embeds", "time_ids"]:
            for r in den[1:]:
                assert torch.equal(r[key], den[0][key])
            t["denoiser." + key] = den[0][key]
        # the decoded image is also stored post-processed as `image` (= clamp(output / 2 + 0.5, 0, 1), NHWC)
        for k in [k for k in t if k.startswith("vae_decode.") and k.endswith(".output")] + sorted(self.drop):
            del t[k]
        return t


def load_pipe(cls_name, d):
    p = getattr(diffusers, cls_name).from_pretrained(d, add_watermarker=False)
    p.set_progress_bar_config(disable=True)
    return p


# ------------------------------------------------------------------------------------------------
# building the checkpoints
# ------------------------------------------------------------------------------------------------


def make_text_encoders(d, seed):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok = M.make_tokenizer_files(os.path.join(d, "tokenizer"), VOCAB)
    # tokenizer_2: the same vocabulary/merges, padded with "!" (id 0) as SDXL's tokenizer_2
    tok2 = CLIPTokenizer(os.path.join(d, "tokenizer", "vocab.json"), os.path.join(d, "tokenizer", "merges.txt"),
                         model_max_length=77, pad_token="!")
    tok2.save_pretrained(os.path.join(d, "tokenizer_2"))
    te1 = CLIPTextModel(CLIPTextConfig(**TE_SPECIAL, **TE1))
    M.randomize_(te1, seed)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE_SPECIAL, **TE2))
    M.randomize_(te2, seed + 1)
    return tok, te1.eval(), tok2, te2.eval()


def make_unet(cfg, seed):
    from diffusers import UNet2DConditionModel

    m = UNet2DConditionModel(**cfg)
    M.randomize_(m, seed)
    return m.eval()


def write_sched_config(d):
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SDXL_SCHED_CONFIG, f, indent=2)
        f.write("\n")


def build_base(d, seed):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok, te1, tok2, te2 = make_text_encoders(d, seed)
    unet = make_unet(UNET_BASE, seed + 2)
    vae = AutoencoderKL(**VAE)
    M.randomize_(vae, seed + 3)
    sched = EulerDiscreteScheduler.from_config(SDXL_SCHED_CONFIG)
    p = StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                  tokenizer_2=tok2, unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                                  add_watermarker=False)
    p.save_pretrained(d)
    write_sched_config(d)


def build_refiner(d, base_dir, seed):
    """SDXL refiner layout: no text_encoder/tokenizer; text_encoder_2, tokenizer_2 and vae are those of the base
    (as in the real refiner), own UNet (5 time ids: aesthetic score instead of target size)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    from transformers import CLIPTextConfig

    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE_SPECIAL, **TE2))
    te2.load_state_dict(load_file(os.path.join(base_dir, "text_encoder_2", "model.safetensors")))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(base_dir, "tokenizer_2"))
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict(load_file(os.path.join(base_dir, "vae", "diffusion_pytorch_model.safetensors")))
    unet = make_unet(UNET_REFINER, seed)
    sched = EulerDiscreteScheduler.from_config(SDXL_SCHED_CONFIG)
    p = StableDiffusionXLImg2ImgPipeline(vae=vae.eval(), text_encoder=None, text_encoder_2=te2.eval(), tokenizer=None,
                                         tokenizer_2=tok2, unet=unet, scheduler=sched,
                                         requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
                                         add_watermarker=False)
    p.save_pretrained(d)
    write_sched_config(d)


# ------------------------------------------------------------------------------------------------
# single-file (SGM / A1111) checkpoints
# ------------------------------------------------------------------------------------------------


def conversion_script():
    return os.path.join(os.environ["REF_SRC"], "diffusers", "scripts", "convert_diffusers_to_original_sdxl.py")


def load_conversion_module():
    spec = importlib.util.spec_from_file_location("convert_diffusers_to_original_sdxl", conversion_script())
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_base_single_file(folder, path):
    """Run diffusers' own scripts/convert_diffusers_to_original_sdxl.py (unchanged) on the folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(REFGEN_DIR, "stubs")] + sys.path)
    out = subprocess.run([sys.executable, conversion_script(), "--model_path", folder, "--checkpoint_path", path,
                          "--use_safetensors"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)


def write_refiner_single_file(folder, path):
    """The refiner has no text_encoder, so the script's __main__ cannot run on it; apply the script's own
    conversion functions the same way, with the refiner's SGM prefix for the OpenCLIP encoder
    (conditioner.embedders.0.model., as in sd_xl_refiner_1.0.safetensors)."""
    import contextlib
    import io

    conv = load_conversion_module()
    with contextlib.redirect_stdout(io.StringIO()):
        unet = conv.convert_unet_state_dict(load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")))
        vae = conv.convert_vae_state_dict(load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")))
        te2 = conv.convert_openclip_text_enc_state_dict(load_file(os.path.join(folder, "text_encoder_2", "model.safetensors")))
    sd = {"model.diffusion_model." + k: v for k, v in unet.items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.items()})
    te2 = {"conditioner.embedders.0.model." + k: v for k, v in te2.items()}
    te2["conditioner.embedders.0.model.text_projection"] = te2.pop(
        "conditioner.embedders.0.model.text_projection.weight").T.contiguous()
    sd.update(te2)
    save_file(sd, path)


def check_single_file(path, folder, cls_name):
    """Load the single file with diffusers' from_single_file(config=folder) and compare every weight with the
    folder's.  Returns {component: max|diff|} and the messages diffusers logged."""
    import logging as _logging

    cls = getattr(diffusers, cls_name)
    ref = cls.from_pretrained(folder, add_watermarker=False)
    handler_records = []

    class _H(_logging.Handler):
        def emit(self, record):
            handler_records.append(record.getMessage())

    h = _H()
    lg = _logging.getLogger("diffusers")
    lg.addHandler(h)
    old = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()
    try:
        sf = cls.from_single_file(path, config=folder, local_files_only=True, add_watermarker=False)
    finally:
        diffusers.utils.logging.set_verbosity(old)
        lg.removeHandler(h)
    res = {}
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        a, b = getattr(ref, name, None), getattr(sf, name, None)
        if a is None and b is None:
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), name
        res[name] = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())
    res["scheduler_same_config"] = dict(ref.scheduler.config) == dict(sf.scheduler.config)
    res["scheduler_class"] = type(sf.scheduler).__name__
    return res, handler_records


def single_file_summary(path):
    sd = load_file(path)
    groups = {}
    for k, v in sd.items():
        top = ".".join(k.split(".")[:3]) if k.startswith("conditioner") else k.split(".")[0]
        groups.setdefault(top, 0)
        groups[top] += 1
    return {"n_tensors": len(sd), "bytes": os.path.getsize(path), "tensors_per_prefix": groups,
            "tensors": {k: list(v.shape) for k, v in sorted(sd.items())}}


# ------------------------------------------------------------------------------------------------
# component references
# ------------------------------------------------------------------------------------------------


def ref_text_encoders(d, ref_dir):
    p = load_pipe("StableDiffusionXLPipeline", d)
    tok, tok2, te1, te2 = p.tokenizer, p.tokenizer_2, p.text_encoder, p.text_encoder_2
    assert tok.fix_text is None and tok2.fix_text is None, "ftfy must NOT be installed"
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    t, m2 = {}, {}
    texts = {"prompts": PROMPTS, "negative_prompts": NEG_PROMPTS, "empty": ["", ""]}
    with torch.no_grad():
        for tag, txt in texts.items():
            ids1, ids2 = tok(txt, **kw).input_ids, tok2(txt, **kw).input_ids
            o1 = te1(ids1, output_hidden_states=True)
            o2 = te2(ids2, output_hidden_states=True)
            t["%s.tokenizer.input_ids" % tag] = ids1
            t["%s.tokenizer_2.input_ids" % tag] = ids2
            t["%s.text_encoder_2.text_embeds" % tag] = o2.text_embeds
            # only asserted below: encode.neg_text / neg_empty / clip_skip1 are their concatenations
            m2[tag] = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)
            if tag == "prompts":
                t["prompts.text_encoder.hidden_states_m2"] = o1.hidden_states[-2]
                t["prompts.text_encoder_2.hidden_states_m2"] = o2.hidden_states[-2]
                t["prompts.text_encoder.last_hidden_state"] = o1.last_hidden_state
                m3 = torch.cat([o1.hidden_states[-3], o2.hidden_states[-3]], -1)
        enc = lambda **k: p.encode_prompt(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **k)  # noqa
        pe, ne, pp, npool = enc(prompt=PROMPTS, negative_prompt=None)
        t.update({"encode.prompt_embeds": pe, "encode.pooled_prompt_embeds": pp,
                  "encode.neg_none.negative_prompt_embeds": ne, "encode.neg_none.negative_pooled_prompt_embeds": npool})
        assert not ne.any() and not npool.any()
        pe2, ne2, pp2, npool2 = enc(prompt=PROMPTS, negative_prompt=NEG_PROMPTS)
        assert torch.equal(pe2, pe) and torch.equal(pp2, pp)
        t.update({"encode.neg_text.negative_prompt_embeds": ne2, "encode.neg_text.negative_pooled_prompt_embeds": npool2})
        pe3, ne3, pp3, npool3 = enc(prompt=PROMPTS, negative_prompt=["", ""])
        t.update({"encode.neg_empty.negative_prompt_embeds": ne3, "encode.neg_empty.negative_pooled_prompt_embeds": npool3})
        pe4, ne4, pp4, npool4 = enc(prompt=PROMPTS, negative_prompt=NEG_PROMPTS, clip_skip=1)
        assert torch.equal(ne4, ne2) and torch.equal(pp4, pp) and torch.equal(npool4, npool2)
        t["encode.clip_skip1.prompt_embeds"] = pe4
        pe5, ne5, pp5, npool5 = enc(prompt=PROMPTS, prompt_2=list(reversed(PROMPTS)), negative_prompt=None)
        t.update({"encode.prompt_2.prompt_embeds": pe5, "encode.prompt_2.pooled_prompt_embeds": pp5})
    # consistency of the recorded pieces with encode_prompt (asserted, so the json can state it)
    assert torch.equal(pe, torch.cat([t["prompts.text_encoder.hidden_states_m2"],
                                      t["prompts.text_encoder_2.hidden_states_m2"]], -1))
    assert torch.equal(pp, t["prompts.text_encoder_2.text_embeds"])
    assert torch.equal(ne2, m2["negative_prompts"]) and torch.equal(npool2, t["negative_prompts.text_encoder_2.text_embeds"])
    assert torch.equal(ne3, m2["empty"]) and torch.equal(npool3, t["empty.text_encoder_2.text_embeds"])
    assert torch.equal(pe4, m3)
    meta = {
        "prompts": PROMPTS, "negative_prompts": NEG_PROMPTS,
        "tokenizer_call": "tokenizer(texts, padding='max_length', max_length=77, truncation=True)",
        "tokenizer_pad_token_id": tok.pad_token_id, "tokenizer_2_pad_token_id": tok2.pad_token_id,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "input_ids": {tag: {"tokenizer": t["%s.tokenizer.input_ids" % tag].tolist(),
                            "tokenizer_2": t["%s.tokenizer_2.input_ids" % tag].tolist()} for tag in texts},
        "cases": {
            "encode.*": "pipe.encode_prompt(prompt=prompts, device='cpu', num_images_per_prompt=1, "
                        "do_classifier_free_guidance=True, ...)",
            "encode.prompt_embeds / pooled_prompt_embeds": "negative_prompt=None (identical for neg_text/neg_empty)",
            "encode.neg_none.*": "negative_prompt=None with force_zeros_for_empty_prompt=true -> all zeros",
            "encode.neg_text.*": "negative_prompt=negative_prompts",
            "encode.neg_empty.*": "negative_prompt=['', ''] (an empty string is NOT None: encoded, not zeros)",
            "encode.clip_skip1.prompt_embeds": "clip_skip=1, negative_prompt=negative_prompts: prompt_embeds = "
                                               "cat(hidden_states[-3] of both); the negative embeds stay "
                                               "hidden_states[-2] (identical to neg_text)",
            "encode.prompt_2.*": "prompt_2=reversed(prompts): text_encoder gets prompts, text_encoder_2 prompt_2",
        },
        "identities (asserted)": [
            "encode.prompt_embeds == cat(prompts.text_encoder.hidden_states_m2, prompts.text_encoder_2.hidden_states_m2, -1)",
            "encode.pooled_prompt_embeds == prompts.text_encoder_2.text_embeds",
            "encode.neg_text.negative_prompt_embeds == cat(hidden_states[-2] of both encoders on negative_prompts)",
            "encode.neg_text.negative_pooled_prompt_embeds == negative_prompts.text_encoder_2.text_embeds",
            "encode.neg_empty.* likewise on ['', ''] (empty.text_encoder_2.text_embeds)",
            "encode.clip_skip1.prompt_embeds == cat(hidden_states[-3] of both encoders on prompts)"],
        "hidden_states_index": "hidden_states_m2 = hidden_states[-2] (output of the second to last encoder layer, "
                               "no final_layer_norm); hidden_states[0] is the embedding output",
        "prompt_embeds": "cat([text_encoder hidden_states[-2], text_encoder_2 hidden_states[-2]], dim=-1)",
        "pooled_prompt_embeds": "text_encoder_2 text_embeds = text_projection(final_layer_norm(last_hidden_state)"
                                "[eos position]) (no bias); eos position = input_ids.argmax(-1) (config eos_token_id == 2)",
    }
    save_ref(os.path.join(ref_dir, "text_encoders.safetensors"), t, {"prompts": PROMPTS})
    M.write_json(os.path.join(ref_dir, "text_encoders.json"), dict(meta, tensors={k: list(v.shape) for k, v in sorted(t.items())}))
    return {"prompt_embeds_absmax": float(pe.abs().max())}


def unet_hook_names(m):
    names = ["time_proj", "time_embedding", "add_time_proj", "add_embedding", "conv_in"]
    names += ["down_blocks.%d" % i for i in range(len(m.down_blocks))]
    names += ["mid_block"]
    names += ["up_blocks.%d" % i for i in range(len(m.up_blocks))]
    names += ["conv_norm_out", "conv_out"]
    return names


def ref_unet(unet_dir, ref_path, seed, time_ids):
    from diffusers import UNet2DConditionModel

    m = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    cfg = m.config
    g = gen(seed)
    B = 2
    sample = randn((B, cfg.in_channels, H // 8, W // 8), g)
    ehs = randn((B, 77, cfg.cross_attention_dim), g)
    n_text = cfg.projection_class_embeddings_input_dim - len(time_ids[0]) * cfg.addition_time_embed_dim
    text_embeds = randn((B, n_text), g)
    time_ids = torch.tensor(time_ids, dtype=torch.float32)
    t_a = torch.tensor(500, dtype=torch.int64)  # 0-d, broadcast to the batch
    t_b = torch.tensor([981.0, 17.5], dtype=torch.float32)  # one per sample
    ack = {"text_embeds": text_embeds, "time_ids": time_ids}
    hooks = Hooks(m, unet_hook_names(m), input_names=["add_embedding"])
    with torch.no_grad():
        out_a = m(sample, t_a, encoder_hidden_states=ehs, added_cond_kwargs=ack).sample
        rec = dict(hooks.rec)
        hooks.remove()
        out_b = m(sample, t_b, encoder_hidden_states=ehs, added_cond_kwargs=ack).sample
    tens = {"sample": sample, "encoder_hidden_states": ehs, "text_embeds": text_embeds, "time_ids": time_ids,
            "timestep_a": t_a, "timestep_b": t_b, "out_a": out_a, "out_b": out_b}
    for k, v in rec.items():
        tens["inter_a." + k] = v
    # the embedding every resnet sees: time_embedding(time_proj(t)) + add_embedding(cat(text_embeds, time_embeds))
    tens["inter_a.emb"] = rec["time_embedding"] + rec["add_embedding"]
    save_ref(ref_path, tens, {"note": "out = unet(sample, timestep, encoder_hidden_states, added_cond_kwargs="
                                      "{text_embeds, time_ids}); inter_a.* = module outputs during the out_a call"})
    return {"out_a_absmax": float(out_a.abs().max())}


def ref_vae(vae_dir, ref_path, seed):
    from diffusers import AutoencoderKL

    m = AutoencoderKL.from_pretrained(vae_dir).eval()
    g = gen(seed)
    image = torch.rand((1, 3, H, W), generator=g) * 2.0 - 1.0
    z = randn((1, 4, H // 8, W // 8), g)
    with torch.no_grad():
        dist = m.encode(image).latent_dist
        # intermediates at latent resolution only (the full-resolution ones would be large)
        h = M.Hooks(m, ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0"])
        dec = m.decode(z).sample
        rec = dict(h.rec)
        h.remove()
    tens = {"image": image, "latent_mean": dist.mean, "latent_logvar": dist.logvar, "latent_std": dist.std,
            "z": z, "decoded": dec}
    for k, v in rec.items():
        tens["inter_dec." + k] = v
    save_ref(ref_path, tens)
    return {"decoded_absmax": float(dec.abs().max())}


# ------------------------------------------------------------------------------------------------
# pipeline runs
# ------------------------------------------------------------------------------------------------


def run_txt2img(d, ref_dir, name, seed, scheduler, negative, sizes):
    from diffusers import DPMSolverMultistepScheduler

    p = load_pipe("StableDiffusionXLPipeline", d)
    sched_note = "the folder's scheduler (EulerDiscreteScheduler, scheduler_config.json)"
    if scheduler == "dpm":
        p.scheduler = DPMSolverMultistepScheduler.from_config(p.scheduler.config)
        sched_note = "DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)"
    g = gen(seed)
    lat = randn((1, 4, H // 8, W // 8), g)
    rec = SDXLRecorder(p)
    steps = []
    NOISE.clear()  # no draw may be used: an unused one (Euler, s_churn = 0) gets NaN
    kw = dict(prompt=PROMPT, negative_prompt=negative, height=H, width=W, num_inference_steps=STEPS,
              guidance_scale=GUIDANCE, latents=lat.clone(), output_type="np", callback_on_step_end=M._step_cb(steps))
    kw.update(sizes)
    with torch.no_grad():
        img = p(**kw).images
    rec.restore()
    assert np.isfinite(img).all(), "an injected NaN (unused-draw marker) reached the output"
    assert all("unused_draw" in e for e in NOISE.log)
    tens = rec.tensors()
    tid = tens["denoiser.time_ids"]
    meta = {"generator": GEN, "pipeline": "StableDiffusionXLPipeline", "prompt": PROMPT, "prompt_2": None,
            "negative_prompt": negative, "height": H, "width": W, "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE, "guidance_rescale": 0.0, "eta": 0.0, "output_type": "np",
            "original_size": sizes.get("original_size"), "crops_coords_top_left": sizes.get("crops_coords_top_left", (0, 0)),
            "target_size": sizes.get("target_size"), "scheduler_setup": sched_note,
            "time_ids_uncond_then_cond": tid.tolist(), "latents_init": "stored (latents_init); the pipeline "
            "multiplies it by scheduler.init_noise_sigma",
            "init_noise_sigma": float(p.scheduler.init_noise_sigma), "vae_scaling_factor": p.vae.config.scaling_factor}
    meta.update(sched_info(p.scheduler))
    M.save_pipeline_run(os.path.join(ref_dir, name + ".safetensors"), rec,
                        {"latents_init": lat, "latents_after_step": torch.stack(steps), "image": torch.from_numpy(img)},
                        jsonable(meta))
    NOISE.clear()
    return {"image_mean": float(img.mean()), "timesteps": meta["scheduler_timesteps"]}


def run_refiner_img2img(rd, ref_dir, seed):
    p = load_pipe("StableDiffusionXLImg2ImgPipeline", rd)
    g = gen(seed)
    image = M.smooth_image(g, H, W)
    shp = (1, 4, H // 8, W // 8)
    noise = [randn(shp, g), randn(shp, g)]
    nan = torch.full(shp, float("nan"))
    # Euler draws (and ignores, s_churn = 0) one tensor per step after the two real draws
    NOISE.set_queue(noise + [nan] * REFINER_STEPS)
    rec = SDXLRecorder(p)
    steps = []
    strength = 0.3
    with torch.no_grad():
        img = p(PROMPT, image=image, strength=strength, num_inference_steps=REFINER_STEPS, guidance_scale=GUIDANCE,
                output_type="np", callback_on_step_end=M._step_cb(steps)).images
    rec.restore()
    assert np.isfinite(img).all(), "an injected NaN (unused-draw marker) reached the output"
    n_loop = len(steps)
    assert len(NOISE.queue) == REFINER_STEPS - n_loop and all(torch.isnan(x).all() for x in NOISE.queue)
    tens = rec.tensors()
    enc_in = torch.from_numpy(image).permute(0, 3, 1, 2) * 2.0 - 1.0
    assert torch.equal(rec.rec["vae_encode"][0]["input"], enc_in)
    rec.drop.add("vae_encode.0.input")
    meta = {"generator": GEN, "pipeline": "StableDiffusionXLImg2ImgPipeline (refiner)", "prompt": PROMPT,
            "negative_prompt": None, "strength": strength, "num_inference_steps": REFINER_STEPS,
            "guidance_scale": GUIDANCE, "aesthetic_score": 6.0, "negative_aesthetic_score": 2.5,
            "original_size": None, "crops_coords_top_left": [0, 0], "height": H, "width": W, "output_type": "np",
            "force_zeros_for_empty_prompt": p.config.force_zeros_for_empty_prompt,
            "requires_aesthetics_score": p.config.requires_aesthetics_score,
            "time_ids_uncond_then_cond": tens["denoiser.time_ids"].tolist(),
            "loop_timesteps": tens["denoiser.timestep"].tolist(),
            "vae_encode_input": "image_in (NHWC, [0,1]) -> NCHW * 2 - 1 (exactly, asserted; not stored)",
            "noise_order": ["noise.0: VAE posterior sample of the input image (latent = mean + std*noise.0, then "
                            "* scaling_factor)",
                            "noise.1: scheduler.add_noise(image_latents, noise.1, first loop timestep)",
                            "then one draw per Euler step, unused (s_churn = 0): injected as NaN"]}
    meta.update(sched_info(p.scheduler))
    M.save_pipeline_run(os.path.join(ref_dir, "img2img.safetensors"), rec,
                        {"image_in": torch.from_numpy(image), "noise.0": noise[0],
                         "noise.1": noise[1], "latents_after_step": torch.stack(steps), "image": torch.from_numpy(img)},
                        jsonable(meta))
    NOISE.clear()
    return {"image_mean": float(img.mean()), "loop_timesteps": meta["loop_timesteps"]}


def run_handoff(bd, rd, ref_dir, seed):
    """Ensemble of expert denoisers: base with denoising_end=0.8 (output_type='latent'), refiner with
    denoising_start=0.8 on those latents.  Both with their folders' EulerDiscreteScheduler."""
    frac = 0.8
    base = load_pipe("StableDiffusionXLPipeline", bd)
    ref = load_pipe("StableDiffusionXLImg2ImgPipeline", rd)
    g = gen(seed)
    lat = randn((1, 4, H // 8, W // 8), g)
    NOISE.clear()
    rec_b = SDXLRecorder(base)
    steps_b = []
    with torch.no_grad():
        mid = base(PROMPT, height=H, width=W, num_inference_steps=REFINER_STEPS, guidance_scale=GUIDANCE,
                   denoising_end=frac, latents=lat.clone(), output_type="latent",
                   callback_on_step_end=M._step_cb(steps_b)).images
    rec_b.restore()
    info_b = sched_info(base.scheduler)
    rec_r = SDXLRecorder(ref)
    steps_r = []
    with torch.no_grad():
        img = ref(PROMPT, image=mid, num_inference_steps=REFINER_STEPS, guidance_scale=GUIDANCE,
                  denoising_start=frac, output_type="np", callback_on_step_end=M._step_cb(steps_r)).images
    rec_r.restore()
    assert np.isfinite(img).all(), "an injected NaN (unused-draw marker) reached the output"
    info_r = sched_info(ref.scheduler)
    assert all("unused_draw" in e for e in NOISE.log)
    tb, tr = rec_b.tensors(), rec_r.tensors()
    t = {"base." + k: v for k, v in tb.items()}
    t.update({"refiner." + k: v for k, v in tr.items()})
    t.update({"latents_init": lat, "base.latents_after_step": torch.stack(steps_b), "handoff_latents": mid,
              "refiner.latents_after_step": torch.stack(steps_r), "image": torch.from_numpy(img)})
    cutoff = int(round(1000 - frac * 1000))
    meta = {"generator": GEN, "what": "base (sdxl_tiny) -> refiner (sdxl_refiner_tiny) hand-off",
            "prompt": PROMPT, "negative_prompt": None, "height": H, "width": W, "guidance_scale": GUIDANCE,
            "num_inference_steps": REFINER_STEPS, "high_noise_frac": frac,
            "base_call": "base(prompt, height, width, num_inference_steps, guidance_scale, denoising_end=0.8, "
                         "latents=latents_init, output_type='latent') -> handoff_latents (NOT divided by the VAE "
                         "scaling factor)",
            "refiner_call": "refiner(prompt, image=handoff_latents, num_inference_steps, guidance_scale, "
                            "denoising_start=0.8, output_type='np') (4-channel image = latents: no VAE encode, "
                            "no add_noise)",
            "discrete_timestep_cutoff": cutoff,
            "base_rule": "base keeps the timesteps t >= cutoff", "refiner_rule": "refiner keeps the timesteps t < cutoff",
            "base_loop_timesteps": tb["denoiser.timestep"].tolist(), "refiner_loop_timesteps": tr["denoiser.timestep"].tolist(),
            "base_time_ids_uncond_then_cond": tb["denoiser.time_ids"].tolist(),
            "refiner_time_ids_uncond_then_cond": tr["denoiser.time_ids"].tolist(),
            "base_scheduler": info_b, "refiner_scheduler": info_r,
            "tensors": {k: list(v.shape) for k, v in sorted(t.items())}, "noise_calls": NOISE.log}
    save_ref(os.path.join(ref_dir, "refiner_handoff.safetensors"), t, {"what": meta["what"]})
    M.write_json(os.path.join(ref_dir, "refiner_handoff.json"), jsonable(meta))
    NOISE.clear()
    return {"image_mean": float(img.mean()), "base_timesteps": meta["base_loop_timesteps"],
            "refiner_timesteps": meta["refiner_loop_timesteps"]}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

OUTPUTS = ["sdxl_tiny", "sdxl_refiner_tiny", "sdxl_tiny_single_file.safetensors",
           "sdxl_refiner_tiny_single_file.safetensors"]


def build_all(out, refiner_single_file=False):
    j = os.path.join
    os.makedirs(out, exist_ok=True)
    for o in OUTPUTS:
        p = j(out, o)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    bd, rd = j(out, "sdxl_tiny"), j(out, "sdxl_refiner_tiny")
    bref, rref = j(bd, "reference"), j(rd, "reference")
    s = {}
    build_base(bd, SEED)
    build_refiner(rd, bd, SEED + 10)
    s["text_encoders"] = ref_text_encoders(bd, bref)
    s["unet"] = ref_unet(j(bd, "unet"), j(bref, "unet_io.safetensors"), SEED + 20,
                         [[2.0 * H, 2.0 * W, 4.0, 8.0, H + 16.0, W + 16.0], [H, W, 0.0, 0.0, H, W]])
    s["vae"] = ref_vae(j(bd, "vae"), j(bref, "vae_io.safetensors"), SEED + 21)
    s["refiner_unet"] = ref_unet(j(rd, "unet"), j(rref, "unet_io.safetensors"), SEED + 22,
                                 [[2.0 * H, 2.0 * W, 4.0, 8.0, 6.0], [H, W, 0.0, 0.0, 2.5]])
    sizes = dict(original_size=(2 * H, 2 * W), crops_coords_top_left=(4, 8), target_size=(H + 16, W + 16))
    s["txt2img"] = run_txt2img(bd, bref, "txt2img", SEED + 30, "dpm", None, {})
    s["txt2img_negative"] = run_txt2img(bd, bref, "txt2img_negative", SEED + 31, "dpm", NEG, sizes)
    s["txt2img_euler"] = run_txt2img(bd, bref, "txt2img_euler", SEED + 32, "euler", None, {})
    s["refiner_img2img"] = run_refiner_img2img(rd, rref, SEED + 40)
    s["refiner_handoff"] = run_handoff(bd, rd, bref, SEED + 41)
    # single-file checkpoints + load-back check with diffusers' from_single_file
    sf = j(out, "sdxl_tiny_single_file.safetensors")
    write_base_single_file(bd, sf)
    res, logs = check_single_file(sf, bd, "StableDiffusionXLPipeline")
    M.write_json(j(bref, "single_file.json"), jsonable({
        "file": "../../sdxl_tiny_single_file.safetensors",
        "made_by": "diffusers v0.29.2 scripts/convert_diffusers_to_original_sdxl.py --model_path sdxl_tiny "
                   "--checkpoint_path sdxl_tiny_single_file.safetensors --use_safetensors (unchanged script)",
        "load_check": "StableDiffusionXLPipeline.from_single_file(file, config='sdxl_tiny', local_files_only=True): "
                      "max|diff| of every weight vs from_pretrained('sdxl_tiny')",
        "max_abs_diff": res, "diffusers_log": logs, **single_file_summary(sf)}))
    s["single_file"] = res
    # the refiner's single file is not small (~0.9 MB): by default it is made and checked in a temporary folder
    tmp = None
    if refiner_single_file:
        rsf = j(out, "sdxl_refiner_tiny_single_file.safetensors")
    else:
        tmp = tempfile.mkdtemp(prefix="sdxl_refiner_sf_")
        rsf = j(tmp, "sdxl_refiner_tiny_single_file.safetensors")
    write_refiner_single_file(rd, rsf)
    rres, rlogs = check_single_file(rsf, rd, "StableDiffusionXLImg2ImgPipeline")
    M.write_json(j(rref, "single_file.json"), jsonable({
        "file": "../../sdxl_refiner_tiny_single_file.safetensors" if refiner_single_file else
                "not kept (make_sdxl_sets.py --refiner-single-file writes it next to sdxl_tiny_single_file.safetensors)",
        "made_by": "the functions of diffusers v0.29.2 scripts/convert_diffusers_to_original_sdxl.py "
                   "(convert_unet_state_dict, convert_vae_state_dict, convert_openclip_text_enc_state_dict, "
                   "text_projection transposed) with the refiner's prefix conditioner.embedders.0.model. "
                   "(the script's __main__ needs a text_encoder/, which a refiner has not)",
        "load_check": "StableDiffusionXLImg2ImgPipeline.from_single_file(file, config='sdxl_refiner_tiny', "
                      "local_files_only=True): max|diff| of every weight vs from_pretrained",
        "max_abs_diff": rres, "diffusers_log": rlogs, **single_file_summary(rsf)}))
    s["refiner_single_file"] = rres
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return s


def file_hashes(root):
    res = {}
    for dp, dn, fn in os.walk(root):
        for f in fn:
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, root)
            if rel.split(os.sep)[0] not in OUTPUTS or f == "generation_info.json":
                continue
            with open(p, "rb") as fh:
                res[rel] = hashlib.sha256(fh.read()).hexdigest()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--check-determinism", action="store_true",
                    help="generate a second time into a temporary folder and require bit-identical files")
    ap.add_argument("--refiner-single-file", action="store_true",
                    help="also keep sdxl_refiner_tiny_single_file.safetensors (~0.9 MB) in the output")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    summary = build_all(out, args.refiner_single_file)
    det = "not checked"
    if args.check_determinism:
        # a second process (so that anything depending on hash order or process state shows up)
        rerun = [os.path.abspath(__file__)] + (["--refiner-single-file"] if args.refiner_single_file else [])
        det = C.rerun_determinism(rerun, out, file_hashes, "sdxl_refgen_")
    sizes = {}
    for o in OUTPUTS:
        p = os.path.join(out, o)
        if os.path.isdir(p):
            sizes[o] = sum(os.path.getsize(os.path.join(dp, f)) for dp, dn, fn in os.walk(p) for f in fn)
        elif os.path.exists(p):
            sizes[o] = os.path.getsize(p)
    info = {"generator": GEN, "reference_sources": REF_VERSIONS, "versions": M.versions(),
            "torch_threads": torch.get_num_threads(), "determinism_rerun": det, "bytes": sizes,
            "configs": {"text_encoder": dict(TE1, **TE_SPECIAL), "text_encoder_2": dict(TE2, **TE_SPECIAL),
                        "unet_base": UNET_BASE, "unet_refiner": UNET_REFINER, "vae": VAE,
                        "scheduler": SDXL_SCHED_CONFIG},
            "summary": summary}
    for d in ["sdxl_tiny", "sdxl_refiner_tiny"]:
        M.write_json(os.path.join(out, d, "reference", "generation_info.json"), jsonable(info))
    print(json.dumps(jsonable(summary), indent=1))
    print("determinism:", det)
    print("bytes:", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
