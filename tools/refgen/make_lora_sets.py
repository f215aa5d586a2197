#!/usr/bin/env python3
"""Generate the LoRA reference sets under tests/data/lora/: small LoRA files in the formats people download
(kohya/A1111, diffusers/PEFT, old diffusers attention processors) for the SD 1.x tiny pipeline of the shared
conformance set and for tests/data/sdxl_tiny, plus what diffusers 0.29.2 makes of them.

    REF_SRC=/opt/ref-src /usr/bin/python3 tools/refgen/make_lora_sets.py [--out tests/data/lora] [--check-determinism]

What is diffusers' own code and what is reproduced (peft is not installed, and diffusers 0.29.2 loads LoRAs only
through peft, see tools/refgen/README.md):
* key conversion: diffusers' own `LoraLoaderMixin.lora_state_dict` / `StableDiffusionXLLoraLoaderMixin.lora_state_dict`
  (which run `_maybe_map_sgm_blocks_to_diffusers` and `_convert_non_diffusers_lora_to_diffusers`), then the
  same steps as `load_lora_into_unet`/`_process_lora`/`load_lora_into_text_encoder` with diffusers' own
  `convert_unet_state_dict_to_peft`, `convert_state_dict_to_diffusers`, `convert_state_dict_to_peft` and
  `get_peft_kwargs` (the glue lines between them are copied, since those methods raise without peft);
* which module each LoRA gets and its r / lora_alpha: reproduced from peft 0.11.1 (`check_target_module_exists`,
  `LoraModel._create_and_replace`'s rank_pattern/alpha_pattern lookup);
* the merge: diffusers' own `LoRACompatibleLinear._fuse_lora` / `LoRACompatibleConv._fuse_lora` with
  `LoRALinearLayer` / `LoRAConv2dLayer` (diffusers' pre-peft LoRA layers, still in 0.29.2), checked against
  peft 0.11.1's `get_delta_weight` + `scale_layer` math, reproduced;
* the SGM (input_blocks/middle_block/output_blocks) names of the SDXL kohya file: diffusers' own
  scripts/convert_diffusers_to_original_sdxl.py `convert_unet_state_dict` (the script that made
  sdxl_tiny_single_file.safetensors);
* the forwards: diffusers' UNet2DConditionModel and transformers' CLIP text models with the merged weights.
"""
import argparse
import copy
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refgen_common as C  # noqa: E402
from refgen_common import HERE, REPO, jsonable, sd_tiny_dir, sha256, shared_root  # noqa: E402,F401

REFGEN_DIR = C.refgen_dir()
M = C.make_sets(setup=False, noise=False)  # set up below, after the imports, as before
from make_sets import gen  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import diffusers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

M._setup_paths()
assert diffusers.__version__ == "0.29.2", diffusers.__version__

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders.lora import LoraLoaderMixin, StableDiffusionXLLoraLoaderMixin  # noqa: E402
from diffusers.models.lora import (LoRACompatibleConv, LoRACompatibleLinear, LoRAConv2dLayer,  # noqa: E402
                                   LoRALinearLayer, text_encoder_attn_modules, text_encoder_mlp_modules)
from diffusers.utils import USE_PEFT_BACKEND  # noqa: E402
from diffusers.utils.peft_utils import get_peft_kwargs  # noqa: E402
from diffusers.utils.state_dict_utils import (convert_state_dict_to_diffusers, convert_state_dict_to_peft,  # noqa: E402
                                              convert_unet_state_dict_to_peft)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

GEN = "tools/refgen/make_lora_sets.py"
SEED = 777
SD_TINY_REL = "../shared/conformance/sd_tiny"  # from the repository root, as the C++ tests reference it
SDXL_TINY_REL = "tests/data/sdxl_tiny"
WEIGHT = 0.8
PROMPTS = ["a photo of a cat sitting on a wooden table"]
H8, W8 = 8, 12  # latent size of the UNet input (non-square)
REF_VERSIONS = {
    "diffusers": "0.29.2 (tag v0.29.2, c586aadef6bb66d355fa40a2b95a0bea8a6fe79c)",
    "transformers": "4.39.0.dev0 (duyy97/transformers ebebfbf58043b749f47a2f701a161f0c12e5f107)",
    "huggingface_hub": "0.23.4 (tag v0.23.4, 4c7aa33bac0b4fb59796e76fcc9cd7f5ff0fd426)",
    "peft (reproduced, not run)": "0.11.1 (tag v0.11.1): tuners/lora/model.py _create_and_replace, "
                                  "tuners/tuners_utils.py check_target_module_exists, tuners/lora/layer.py "
                                  "Linear/Conv2d get_delta_weight, merge, scale_layer",
}

# the regular expressions that pick the LoRA'd modules (diffusers / transformers module paths)
ATTN = r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
PROJ = r"\.attentions\.\d+\.(proj_in|proj_out)$"
FF = r"\.ff\.net\.(0\.proj|2)$"
RES_CONV = r"\.resnets\.\d+\.(conv1|conv2)$"
RES_CONV_32 = r"^(down_blocks\.0|up_blocks\.1)\.resnets\.\d+\.(conv1|conv2)$"  # SD 1.x: the 32-channel levels
TE_ATTN = r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$"
TE_MLP = r"\.mlp\.(fc1|fc2)$"




def write_json(path, obj):
    C.write_json(path, obj, width=320)


def sdxl_tiny_dir():
    return os.path.join(REPO, SDXL_TINY_REL)




# ------------------------------------------------------------------------------------------------
# base models
# ------------------------------------------------------------------------------------------------


class Base:
    """A pipeline folder's UNet and text encoder(s), float32, eval."""

    def __init__(self, kind, folder):
        self.kind, self.folder = kind, folder
        self.unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
        self.te = {"text_encoder": CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()}
        self.tok = {"text_encoder": CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))}
        if kind == "sdxl":
            self.te["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                os.path.join(folder, "text_encoder_2")).eval()
            self.tok["text_encoder_2"] = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer_2"))
        for t in self.tok.values():
            assert t.fix_text is None, "ftfy must NOT be installed"

    def component(self, name):
        return self.unet if name == "unet" else self.te[name]

    def components(self):
        return ["unet"] + list(self.te)


def pick(model, *patterns, extra=()):
    """Module paths (named_modules order) that match one of the patterns, plus the listed extra paths."""
    names = [n for n, m in model.named_modules() if any(re.search(p, n) for p in patterns) or n in extra]
    for e in extra:
        assert e in names, e
    return names


def kind_of(mod):
    if isinstance(mod, torch.nn.Linear):
        return "linear"
    assert isinstance(mod, torch.nn.Conv2d), type(mod)
    return "conv%dx%d" % tuple(mod.kernel_size)


def sgm_names(unet):
    """diffusers UNet module path -> SGM path, from diffusers' own scripts/convert_diffusers_to_original_sdxl.py
    (convert_unet_state_dict keeps the tensor objects, so the mapping is read back by identity)."""
    path = os.path.join(os.environ["REF_SRC"], "diffusers", "scripts", "convert_diffusers_to_original_sdxl.py")
    spec = importlib.util.spec_from_file_location("convert_diffusers_to_original_sdxl", path)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    sd = dict(unet.state_dict(keep_vars=True))
    out = conv.convert_unet_state_dict(sd)
    by_id = {id(v): k for k, v in out.items()}
    res = {}
    for k, v in sd.items():
        if k.endswith(".weight"):
            res[k[: -len(".weight")]] = by_id[id(v)][: -len(".weight")]
    return res


# ------------------------------------------------------------------------------------------------
# LoRA files
# ------------------------------------------------------------------------------------------------


def lora_pair(g, mod, rank):
    """Random, non-trivial (down, up): down ~ N/sqrt(fan_in), up ~ 0.5 N/sqrt(rank), so that up @ down is about half
    the size of the base weight."""
    if isinstance(mod, torch.nn.Linear):
        down = torch.randn((rank, mod.in_features), generator=g) / math.sqrt(mod.in_features)
        up = torch.randn((mod.out_features, rank), generator=g) * (0.5 / math.sqrt(rank))
    else:
        kh, kw = mod.kernel_size
        fan_in = mod.in_channels * kh * kw
        down = torch.randn((rank, mod.in_channels, kh, kw), generator=g) / math.sqrt(fan_in)
        up = torch.randn((mod.out_channels, rank, 1, 1), generator=g) * (0.5 / math.sqrt(rank))
    return down.contiguous(), up.contiguous()


class Spec:
    """One LoRA file: per component a list of (module path, rank, alpha or None) and the key naming."""

    def __init__(self, name, base, fmt, weights, chosen, description):
        self.name, self.base, self.fmt, self.weights, self.chosen = name, base, fmt, weights, chosen
        self.description = description
        self.modules = []  # (component, module path, rank, alpha)
        self.groups = {}  # group label -> (rank, alpha)

    def add(self, component, paths, rank, alpha, group):
        for p in paths:
            self.modules.append((component, p, rank, alpha))
        assert group not in self.groups
        self.groups[group] = dict(rank=rank, alpha=alpha, count=len(paths), component=component)


def kohya_stem(spec, component, path, sgm):
    if component == "unet":
        return "lora_unet_" + (sgm[path] if spec.base.kind == "sdxl" else path).replace(".", "_")
    pre = {"text_encoder": "lora_te1_" if spec.base.kind == "sdxl" else "lora_te_", "text_encoder_2": "lora_te2_"}
    return pre[component] + path.replace(".", "_")


def old_diffusers_stem(component, path):
    # diffusers <= 0.17 attention-processor LoRA: unet.<attention>.processor.to_q_lora / to_out_lora, and for the text
    # encoder text_encoder.<self_attn>.to_q_lora ... (monkey-patched q_proj/k_proj/v_proj/out_proj)
    if component == "unet":
        m = re.match(r"(.*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$", path)
        proj = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}[m.group(2)]
        return "unet.%s.processor.%s_lora" % (m.group(1), proj)
    m = re.match(r"(.*\.self_attn)\.(q_proj|k_proj|v_proj|out_proj)$", path)
    proj = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}[m.group(2)]
    return "%s.%s.%s_lora" % (component, m.group(1), proj)


SUFFIXES = {"kohya": (".lora_down.weight", ".lora_up.weight", ".alpha"),
            "peft": (".lora_A.weight", ".lora_B.weight", None),
            "old_diffusers": (".down.weight", ".up.weight", None)}


def build_lora(spec, seed):
    """Returns (state dict as saved, per-module records)."""
    g = gen(seed)
    sgm = sgm_names(spec.base.unet) if (spec.fmt == "kohya" and spec.base.kind == "sdxl") else None
    sd, recs = {}, []
    dsuf, usuf, asuf = SUFFIXES[spec.fmt]
    for component, path, rank, alpha in spec.modules:
        mod = dict(spec.base.component(component).named_modules())[path]
        down, up = lora_pair(g, mod, rank)
        if spec.fmt == "kohya":
            stem = kohya_stem(spec, component, path, sgm)
        elif spec.fmt == "peft":
            stem = "%s.%s" % (component, path)
        else:
            stem = old_diffusers_stem(component, path)
        keys = [stem + dsuf, stem + usuf]
        sd[stem + dsuf], sd[stem + usuf] = down, up
        if alpha is not None:
            assert asuf is not None
            sd[stem + asuf] = torch.tensor(float(alpha), dtype=torch.float32)  # 0-d, as sd-scripts writes it
            keys.append(stem + asuf)
        recs.append(dict(component=component, module=path, stem=stem, keys=keys, rank=rank, alpha=alpha,
                         kind=kind_of(mod)))
    return sd, recs


# ------------------------------------------------------------------------------------------------
# what diffusers 0.29.2 makes of a LoRA file
# ------------------------------------------------------------------------------------------------


def peft_resolve(cfg, model):
    """peft 0.11.1, reproduced: the modules that inject_adapter wraps (check_target_module_exists) and the r /
    lora_alpha that LoraModel._create_and_replace gives each (rank_pattern / alpha_pattern lookup)."""
    targets = cfg["target_modules"]
    pattern_keys = list(cfg["rank_pattern"].keys()) + list(cfg["alpha_pattern"].keys())
    res, hit = {}, set()
    for key, mod in model.named_modules():
        if key in targets:
            t = key
        else:
            t = next((t for t in targets if key.endswith("." + t)), None)
        if t is None:
            continue
        hit.add(t)
        tkey = next(filter(lambda k: re.match(rf".*\.{k}$", key), pattern_keys), key)
        r = cfg["rank_pattern"].get(tkey, cfg["r"])
        alpha = cfg["alpha_pattern"].get(tkey, cfg["lora_alpha"])
        res[key] = dict(r=r, lora_alpha=alpha, scaling=alpha / r, kind=kind_of(mod))
    return res, sorted(set(targets) - hit)


def diffusers_view(spec, sd):
    """Run diffusers' conversion of the file as load_lora_weights does.  Returns, per component, the peft state dict,
    the network alphas, get_peft_kwargs' LoraConfig kwargs, the resolved modules, and {original key: peft key}."""
    work = dict(sd)
    origin = {id(v): k for k, v in work.items()}
    if spec.base.kind == "sdxl":
        state_dict, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(work, unet_config=spec.base.unet.config)
    else:
        state_dict, alphas = LoraLoaderMixin.lora_state_dict(work)
    assert all("lora" in k or "dora_scale" in k for k in state_dict), "Invalid LoRA checkpoint."
    after_lora_state_dict = {origin[id(v)]: k for k, v in state_dict.items()}
    out = {"after_lora_state_dict": after_lora_state_dict, "network_alphas": alphas, "components": {}}
    keys = list(state_dict.keys())
    # --- load_lora_into_unet -> unet.load_attn_procs -> _process_lora (unet_identifier_key = "unet")
    if not all(k.startswith("text_encoder") for k in keys):
        unet_keys = [k for k in keys if k.startswith("unet")]
        unet_sd = {k.replace("unet.", ""): v for k, v in state_dict.items() if k in unet_keys}
        na = alphas
        if na is not None:
            na = {k.replace("unet.", ""): v for k, v in na.items() if k.startswith("unet")}
        peft_sd = convert_unet_state_dict_to_peft(unet_sd if len(unet_sd) > 0 else state_dict)
        if na is not None:
            na = convert_unet_state_dict_to_peft(na)
        rank = {k: v.shape[1] for k, v in peft_sd.items() if "lora_B" in k}
        cfg = get_peft_kwargs(rank, na, peft_sd, is_unet=True)
        out["components"]["unet"] = dict(peft_sd=peft_sd, network_alphas=na, config=cfg)
    # --- load_lora_into_text_encoder (SD: whole state dict, prefix "text_encoder"; SDXL: the "text_encoder." and
    # "text_encoder_2." parts, each with its prefix)
    for prefix in spec.base.te:
        part = state_dict
        if spec.base.kind == "sdxl":
            part = {k: v for k, v in state_dict.items() if prefix + "." in k}
            if not part:
                continue
        pkeys = list(part.keys())
        if not any("text_encoder" in k for k in pkeys):
            continue
        te_keys = [k for k in pkeys if k.startswith(prefix) and k.split(".")[0] == prefix]
        te_sd = {k.replace(prefix + ".", ""): v for k, v in part.items() if k in te_keys}
        if not te_sd:
            continue
        te_sd = convert_state_dict_to_diffusers(te_sd)
        te_sd = convert_state_dict_to_peft(te_sd)
        te = spec.base.te[prefix]
        rank = {}
        for name, _ in text_encoder_attn_modules(te):
            rank_key = f"{name}.out_proj.lora_B.weight"
            rank[rank_key] = te_sd[rank_key].shape[1]  # diffusers 0.29.2 needs out_proj in every layer
        if any(".mlp." in k for k in te_sd):
            for name, _ in text_encoder_mlp_modules(te):  # ... and fc1 and fc2 in every layer, if any mlp
                rank[f"{name}.fc1.lora_B.weight"] = te_sd[f"{name}.fc1.lora_B.weight"].shape[1]
                rank[f"{name}.fc2.lora_B.weight"] = te_sd[f"{name}.fc2.lora_B.weight"].shape[1]
        na = alphas
        if na is not None:
            alpha_keys = [k for k in na.keys() if k.startswith(prefix) and k.split(".")[0] == prefix]
            na = {k.replace(prefix + ".", ""): v for k, v in na.items() if k in alpha_keys}
        cfg = get_peft_kwargs(rank, na, te_sd, is_unet=False)
        out["components"][prefix] = dict(peft_sd=te_sd, network_alphas=na, config=cfg)
    for comp, c in out["components"].items():
        c["peft_key_of"] = {origin[id(v)]: k for k, v in c["peft_sd"].items()}
        c["resolved"], c["unmatched_targets"] = peft_resolve(c["config"], spec.base.component(comp))
    return out


# ------------------------------------------------------------------------------------------------
# merging
# ------------------------------------------------------------------------------------------------


def fuse_diffusers(mod, down, up, network_alpha, weight):
    """diffusers' own pre-peft merge: LoRACompatibleLinear/Conv._fuse_lora(lora_scale=weight) with a
    LoRALinearLayer/LoRAConv2dLayer(network_alpha) (network_alpha None = no alpha = scale 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        rank = down.shape[0]
        if isinstance(mod, torch.nn.Linear):
            layer = LoRALinearLayer(mod.in_features, mod.out_features, rank=rank, network_alpha=network_alpha)
            comp = LoRACompatibleLinear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        else:
            layer = LoRAConv2dLayer(mod.in_channels, mod.out_channels, rank=rank, kernel_size=mod.kernel_size,
                                    stride=mod.stride, padding=mod.padding, network_alpha=network_alpha)
            comp = LoRACompatibleConv(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride,
                                      padding=mod.padding, bias=mod.bias is not None)
        with torch.no_grad():
            layer.down.weight.copy_(down)
            layer.up.weight.copy_(up)
            comp.weight.copy_(mod.weight)
        comp.set_lora_layer(layer)
        comp._fuse_lora(lora_scale=weight)
    return comp.weight.detach().clone()


def fuse_peft(mod, A, B, r, lora_alpha, weight):
    """peft 0.11.1, reproduced: scaling = lora_alpha / r, scale_layer(weight) (only if weight != 1, as diffusers'
    fuse_lora), merge: W + get_delta_weight."""
    scaling = lora_alpha / r
    if weight != 1.0:
        scaling *= weight
    if isinstance(mod, torch.nn.Linear):
        delta = (B @ A) * scaling
    elif tuple(mod.weight.shape[2:4]) == (1, 1):
        delta = (B.squeeze(3).squeeze(2) @ A.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scaling
    else:
        delta = F.conv2d(A.permute(1, 0, 2, 3), B).permute(1, 0, 2, 3) * scaling
    return mod.weight.detach() + delta


def merged_models(spec, sd, dv, weight):
    """Deep copies of the base components with every LoRA merged at `weight` (diffusers' _fuse_lora); also returns
    the max |diff| to the reproduced peft merge."""
    models = {c: copy.deepcopy(spec.base.component(c)) for c in spec.base.components()}
    worst = 0.0
    for comp, c in dv["components"].items():
        model = models[comp]
        mods = dict(model.named_modules())
        inv = {v: k for k, v in c["peft_key_of"].items()}  # peft key -> original key
        has_alpha = c["network_alphas"] is not None and len(c["network_alphas"]) > 0
        for path, res in c["resolved"].items():
            A = c["peft_sd"][path + ".lora_A.weight"]
            B = c["peft_sd"][path + ".lora_B.weight"]
            assert A.shape[0] == res["r"] == B.shape[1], (path, A.shape, res)
            assert inv[path + ".lora_A.weight"] and inv[path + ".lora_B.weight"]
            mod = mods[path]
            new = fuse_diffusers(mod, A, B, float(res["lora_alpha"]) if has_alpha else None, weight)
            ref = fuse_peft(mod, A, B, res["r"], res["lora_alpha"], weight)
            assert new.shape == mod.weight.shape
            worst = max(worst, float((new - ref).abs().max()))
            with torch.no_grad():
                mod.weight.copy_(new)
    return models, worst


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------


def fixed_inputs(base, seed):
    g = gen(seed)
    cfg = base.unet.config
    t = {"unet.in.sample": torch.randn((1, cfg.in_channels, H8, W8), generator=g),
         "unet.in.timestep": torch.tensor([500], dtype=torch.int64),
         "unet.in.encoder_hidden_states": torch.randn((1, 77, cfg.cross_attention_dim), generator=g)}
    if base.kind == "sdxl":
        n_time = 6
        n_text = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
        t["unet.in.text_embeds"] = torch.randn((1, n_text), generator=g)
        t["unet.in.time_ids"] = torch.tensor([[128.0, 192.0, 4.0, 8.0, 64.0, 96.0]])
    for name, tok in base.tok.items():
        t["%s.in.input_ids" % name] = tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids
    return t


def run_models(base, models, inp, tag):
    out = {}
    with torch.no_grad():
        kw = {}
        if base.kind == "sdxl":
            kw["added_cond_kwargs"] = {"text_embeds": inp["unet.in.text_embeds"], "time_ids": inp["unet.in.time_ids"]}
        out["unet.out.%s" % tag] = models["unet"](inp["unet.in.sample"], inp["unet.in.timestep"],
                                                  encoder_hidden_states=inp["unet.in.encoder_hidden_states"],
                                                  **kw).sample
        for name in base.te:
            o = models[name](inp["%s.in.input_ids" % name], output_hidden_states=True)
            out["%s.last_hidden_state.%s" % (name, tag)] = o.last_hidden_state
            if base.kind == "sdxl":
                out["%s.hidden_states_m2.%s" % (name, tag)] = o.hidden_states[-2]
            if name == "text_encoder_2":
                out["%s.text_embeds.%s" % (name, tag)] = o.text_embeds
    return {k: M.f32(v) for k, v in out.items()}


def wtag(w):
    return "lora_%g" % w if w != 1.0 else "lora_1.0"


def make_set(spec, out_dir, seed):
    sd, recs = build_lora(spec, seed)
    save_file(sd, os.path.join(out_dir, spec.name + ".safetensors"), metadata=file_metadata(spec))
    sd = load_file(os.path.join(out_dir, spec.name + ".safetensors"))  # what a reader gets back
    dv = diffusers_view(spec, sd)
    # every key maps, to the module it was made for, with the rank and alpha of the file
    modules, unmatched = {}, []
    for r in recs:
        comp = r["component"]
        c = dv["components"][comp]
        dkey = dv["after_lora_state_dict"][r["keys"][0]]
        pkey = c["peft_key_of"][r["keys"][0]]
        target = pkey[: -len(".lora_A.weight")]
        assert pkey.endswith(".lora_A.weight") and c["peft_key_of"][r["keys"][1]] == target + ".lora_B.weight"
        if target not in c["resolved"]:
            unmatched.append(r)
            continue
        res = c["resolved"][target]
        assert target == r["module"], (r["stem"], target, r["module"])
        file_alpha = r["alpha"] if r["alpha"] is not None else r["rank"]
        assert res["r"] == r["rank"] and float(res["lora_alpha"]) == float(file_alpha), (r, res)
        assert res["kind"] == r["kind"]
        modules[r["stem"]] = {"module": "%s.%s" % (comp, target), "kind": r["kind"], "rank": r["rank"],
                              "alpha": r["alpha"], "scale": file_alpha / r["rank"]}
        if spec.fmt != "peft":
            modules[r["stem"]]["diffusers_key"] = dkey  # the key after lora_state_dict (kohya / old format)
    for comp, c in dv["components"].items():
        assert not c["unmatched_targets"], (comp, c["unmatched_targets"])
        assert len(c["resolved"]) == sum(1 for r in recs if r["component"] == comp)
    assert not unmatched
    inp = fixed_inputs(spec.base, seed + 1)
    tens = dict(inp)
    tens.update(run_models(spec.base, {c: spec.base.component(c) for c in spec.base.components()}, inp, "base"))
    peft_diff = {}
    for w in spec.weights:
        models, peft_diff[w] = merged_models(spec, sd, dv, w)
        tens.update(run_models(spec.base, models, inp, wtag(w)))
        for comp, path in spec.chosen:
            tens["weight.%s.%s.%s" % (comp, path, wtag(w))] = M.f32(dict(models[comp].named_modules())[path].weight)
    # independent check of the chosen layers: float64, straight from the file's keys and the base weights
    indep = 0.0
    for comp, path in spec.chosen:
        r = next(r for r in recs if (r["component"], r["module"]) == (comp, path))
        down, up = sd[r["keys"][0]].double(), sd[r["keys"][1]].double()
        scale = (r["alpha"] if r["alpha"] is not None else r["rank"]) / r["rank"]
        base_w = dict(spec.base.component(comp).named_modules())[path].weight.detach().double()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base_w.shape)
        for w in spec.weights:
            got = tens["weight.%s.%s.%s" % (comp, path, wtag(w))].double()
            indep = max(indep, float((got - (base_w + w * scale * delta)).abs().max()))
    assert indep < 1e-6, indep
    # the LoRA must move every output it can reach
    moved = {}
    for k in [k for k in tens if k.endswith(".base") and not k.startswith("weight.")]:
        for w in spec.weights:
            d = float((tens[k[: -len("base")] + wtag(w)] - tens[k]).abs().max())
            moved["%s %s" % (k[: -len(".base")], wtag(w))] = d
            assert d > 1e-3, (k, w, d)
    M.save_ref(os.path.join(out_dir, spec.name + "_ref.safetensors"), tens,
               {"generator": GEN, "lora": spec.name + ".safetensors"})
    meta = ref_json(spec, sd, dv, modules, tens, peft_diff, moved)
    meta["chosen_layers_float64_check"] = ("max |stored - (W + weight * alpha / rank * (up.flatten(1) @ down.flatten(1)))| "
                                           "in float64 from the file's keys = %.3g" % indep)
    write_json(os.path.join(out_dir, spec.name + "_ref.json"), jsonable(meta))
    return {"modules": len(modules), "peft_formula_max_abs_diff": peft_diff, "chosen_layers_float64_check": indep,
            "min_output_change": min(moved.values())}


def file_metadata(spec):
    if spec.fmt == "kohya":
        g = spec.groups
        return {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0" if spec.base.kind == "sdxl"
                else "sd_v1", "ss_network_dim": str(g["unet linear"]["rank"]),
                "ss_network_alpha": str(g["unet linear"]["alpha"]),
                "ss_network_args": json.dumps({"conv_dim": str(g["unet conv3x3"]["rank"]),
                                               "conv_alpha": str(g["unet conv3x3"]["alpha"])}),
                "generator": GEN}
    return {"format": "pt", "generator": GEN}


MERGE_RULE = {
    "linear": "W' = W + weight * (alpha / rank) * (up @ down); up [out, rank], down [rank, in]",
    "conv": "W' = W + weight * (alpha / rank) * delta, delta[o, i, y, x] = sum_r up[o, r, 0, 0] * down[r, i, y, x] "
            "(= (up.flatten(1) @ down.flatten(1)).reshape(W.shape)); up [out, rank, 1, 1], down [rank, in, kh, kw] "
            "with the base conv's kernel (stride/padding are the base conv's and do not enter the merge)",
    "alpha": "alpha = the file's `<lora name>.alpha` (a 0-d float32 tensor) when present, else rank (scale 1)",
    "weight": "the LoRA strength (diffusers: pipe.fuse_lora(lora_scale=weight), or cross_attention_kwargs "
              "{'scale': weight} / encode_prompt(lora_scale=weight) unmerged; A1111 <lora:name:weight>)",
    "bias": "biases are not changed",
}


def ref_json(spec, sd, dv, modules, tens, peft_diff, moved):
    comps = {}
    for comp, c in dv["components"].items():
        cfg = dict(c["config"])
        cfg["target_modules"] = "%d modules: the modules listed above" % len(cfg["target_modules"])
        comps[comp] = {"lora_config_kwargs (get_peft_kwargs)": cfg,
                       "n_modules": len(c["resolved"])}
    groups = {}
    for label, g in spec.groups.items():
        a = g["alpha"] if g["alpha"] is not None else g["rank"]
        groups[label] = dict(g, alpha_in_file=g["alpha"] is not None, scale=a / g["rank"])
    chosen = {}
    for comp, path in spec.chosen:
        stem = next(s for s, m in modules.items() if m["module"] == "%s.%s" % (comp, path))
        chosen["%s.%s" % (comp, path)] = {"lora": stem, "kind": modules[stem]["kind"],
                                          "tensors": ["weight.%s.%s.%s" % (comp, path, t)
                                                      for t in [wtag(w) for w in spec.weights]],
                                          "base": "the base model's %s.weight (not stored here)" % path}
    return {
        "generator": GEN,
        "lora_file": spec.name + ".safetensors",
        "format": spec.fmt,
        "description": spec.description,
        "base_model": SD_TINY_REL if spec.base.kind == "sd" else SDXL_TINY_REL,
        "base_model_note": "path from the repository root; the UNet, text encoder(s) and tokenizer(s) of that "
                           "pipeline folder are the base",
        "weights": spec.weights,
        "merge_rule": MERGE_RULE,
        "module_groups (rank / alpha per module type)": groups,
        "n_tensors_in_file": len(sd),
        "key_suffixes": {"kohya": ["<name>.lora_down.weight", "<name>.lora_up.weight", "<name>.alpha"],
                         "peft": ["<name>.lora_A.weight (down)", "<name>.lora_B.weight (up)"],
                         "old_diffusers": ["<name>.down.weight", "<name>.up.weight"]}[spec.fmt],
        "modules (LoRA name -> diffusers module)": modules,
        "unmatched_keys": [],
        "diffusers": {
            "load": "pipe.load_lora_weights(file) (needs peft in 0.29.2); lora_state_dict(file%s) converts the keys"
                    % (", unet_config=unet.config" if spec.base.kind == "sdxl" else ""),
            "network_alphas (from lora_state_dict)": None if dv["network_alphas"] is None else len(dv["network_alphas"]),
            "components": comps,
            "resolution": "for every module, the r and lora_alpha that peft 0.11.1 gets from these LoraConfig kwargs "
                          "equal the file's rank and alpha (asserted)",
        },
        "merge_made_by": "diffusers 0.29.2 LoRACompatibleLinear/LoRACompatibleConv._fuse_lora(lora_scale=weight) "
                         "(network_alpha = the file's alpha, None when the file has none)",
        "peft_formula_max_abs_diff": {str(k): v for k, v in peft_diff.items()},
        "peft_formula": "peft 0.11.1 merge, reproduced: W + (B @ A) * (lora_alpha / r * weight) (conv 3x3: "
                        "conv2d(A.permute(1,0,2,3), B).permute(1,0,2,3)); differs from the stored merge by float32 "
                        "rounding only",
        "inputs": {
            "unet": "unet(unet.in.sample, unet.in.timestep, encoder_hidden_states=unet.in.encoder_hidden_states%s)"
                    ".sample" % (", added_cond_kwargs={text_embeds: unet.in.text_embeds, time_ids: unet.in.time_ids}"
                                 if spec.base.kind == "sdxl" else ""),
            "text_encoders": "<te>(<te>.in.input_ids, output_hidden_states=True); input_ids = the folder's tokenizer "
                             "on %s, padding='max_length', max_length=77" % json.dumps(PROMPTS),
            "hidden_states_m2": "hidden_states[-2] (SDXL's prompt embedding)",
        },
        "outputs": "<name>.base: no LoRA; <name>.lora_<w>: every LoRA module merged at weight w",
        "chosen_layers": chosen,
        "max_abs_change_of_outputs": moved,
        "tensors": {k: list(v.shape) for k, v in sorted(tens.items())},
    }


# ------------------------------------------------------------------------------------------------
# the sets
# ------------------------------------------------------------------------------------------------


def specs(sd_base, xl_base):
    u, te = sd_base.unet, sd_base.te["text_encoder"]
    out = []
    # 1. kohya / A1111, SD 1.x: diffusers module paths with "_" (sd-scripts uses diffusers' UNet for SD 1.x)
    s = Spec("sd_kohya", sd_base, "kohya", [WEIGHT, 1.0],
             [("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"), ("unet", "down_blocks.0.resnets.0.conv1"),
              ("text_encoder", "text_model.encoder.layers.1.mlp.fc1")],
             "kohya sd-scripts LoRA + LoCon (conv_dim) for SD 1.x: every attention projection, proj_in/proj_out "
             "(1x1 convs in SD 1.x), ff, one time_emb_proj and one conv_shortcut at network_dim/alpha; every resnet "
             "conv1/conv2 plus a downsampler and an upsampler conv (3x3) at conv_dim/alpha; text encoder: q/k/v/out "
             "and fc1/fc2 of every layer")
    s.add("unet", pick(u, ATTN, FF, extra=["down_blocks.0.resnets.0.time_emb_proj"]), 4, 2.0, "unet linear")
    s.add("unet", pick(u, PROJ, extra=["down_blocks.1.resnets.0.conv_shortcut"]), 4, 2.0, "unet conv1x1")
    s.add("unet", pick(u, RES_CONV, extra=["down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv"]),
          2, 3.0, "unet conv3x3")
    s.add("text_encoder", pick(te, TE_ATTN, TE_MLP), 2, 1.0, "text_encoder linear")
    out.append(s)
    # 2. diffusers / PEFT (save_lora_weights layout), SD 1.x, no alpha
    s = Spec("sd_peft", sd_base, "peft", [WEIGHT],
             [("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"), ("unet", "down_blocks.0.resnets.0.conv1"),
              ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj")],
             "diffusers/PEFT LoRA (StableDiffusionPipeline.save_lora_weights layout) for SD 1.x: to_q/to_k/to_v/"
             "to_out.0 of every attention and conv1/conv2 of the resnets of down_blocks.0 and up_blocks.1 (3x3, peft "
             "Conv2d LoRAs), text encoder "
             "q/k/v/out_proj of every layer; no alpha: scale 1")
    s.add("unet", pick(u, ATTN, RES_CONV_32), 4, None, "unet linear+conv3x3")
    s.add("text_encoder", pick(te, TE_ATTN), 2, None, "text_encoder linear")
    out.append(s)
    # 3. old diffusers attention-processor format (diffusers <= 0.17), still read by 0.29.2
    s = Spec("sd_old_diffusers", sd_base, "old_diffusers", [WEIGHT],
             [("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"),
              ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj")],
             "old diffusers LoRAAttnProcessor format (diffusers 0.14-0.17 save_attn_procs / LoraLoaderMixin): "
             "unet.<attention>.processor.to_{q,k,v,out}_lora.{down,up}.weight and text_encoder.<self_attn>."
             "to_{q,k,v,out}_lora.{down,up}.weight; attention only (no conv in this format), no alpha: scale 1")
    s.add("unet", pick(u, ATTN), 4, None, "unet linear")
    s.add("text_encoder", pick(te, TE_ATTN), 4, None, "text_encoder linear")
    out.append(s)
    # 4. kohya SDXL: SGM block names, lora_te1_ / lora_te2_
    xu, xt1, xt2 = xl_base.unet, xl_base.te["text_encoder"], xl_base.te["text_encoder_2"]
    s = Spec("sdxl_kohya", xl_base, "kohya", [WEIGHT],
             [("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"), ("unet", "up_blocks.0.resnets.0.conv1"),
              ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj"),
              ("text_encoder_2", "text_model.encoder.layers.2.mlp.fc1")],
             "kohya sd-scripts LoRA + LoCon for SDXL: SGM names (input_blocks / middle_block / output_blocks, "
             "in_layers_2 / out_layers_3 / emb_layers_1 / skip_connection / op, as sd-scripts' SDXL UNet names "
             "them); every attention projection, proj_in/proj_out (Linear in SDXL), ff, one emb_layers_1 at "
             "network_dim/alpha; skip_connection (1x1) at network_dim/alpha; every resnet conv plus the downsampler "
             "(op) and the upsampler conv (3x3) at conv_dim/alpha; both text encoders: q/k/v/out and fc1/fc2 of "
             "every layer")
    s.add("unet", pick(xu, ATTN, PROJ, FF, extra=["down_blocks.1.resnets.1.time_emb_proj"]), 4, 1.0, "unet linear")
    s.add("unet", pick(xu, extra=["up_blocks.0.resnets.0.conv_shortcut"]), 4, 1.0, "unet conv1x1")
    s.add("unet", pick(xu, RES_CONV, extra=["down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv"]),
          2, 2.0, "unet conv3x3")
    s.add("text_encoder", pick(xt1, TE_ATTN, TE_MLP), 4, 2.0, "text_encoder linear")
    s.add("text_encoder_2", pick(xt2, TE_ATTN, TE_MLP), 2, 4.0, "text_encoder_2 linear")
    out.append(s)
    # 5. PEFT SDXL
    s = Spec("sdxl_peft", xl_base, "peft", [WEIGHT],
             [("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"), ("unet", "up_blocks.0.resnets.0.conv1"),
              ("text_encoder", "text_model.encoder.layers.1.self_attn.q_proj"),
              ("text_encoder_2", "text_model.encoder.layers.2.mlp.fc1")],
             "diffusers/PEFT LoRA (StableDiffusionXLPipeline.save_lora_weights layout): unet to_q/to_k/to_v/to_out.0 "
             "of every attention and every resnet conv1/conv2; text_encoder q/k/v/out_proj; text_encoder_2 "
             "q/k/v/out_proj and fc1/fc2; no alpha: scale 1")
    s.add("unet", pick(xu, ATTN, RES_CONV), 4, None, "unet linear+conv3x3")
    s.add("text_encoder", pick(xt1, TE_ATTN), 2, None, "text_encoder linear")
    s.add("text_encoder_2", pick(xt2, TE_ATTN, TE_MLP), 4, None, "text_encoder_2 linear")
    out.append(s)
    return out


def make_unmatched(sd_base, out_dir, seed):
    """One LoRA that maps and one that maps onto no module (down_blocks.9 does not exist)."""
    g = gen(seed)
    u = sd_base.unet
    mods = dict(u.named_modules())
    good = "down_blocks.0.attentions.0.proj_in"
    sd = {}
    for stem, mod in [("lora_unet_" + good.replace(".", "_"), mods[good]),
                      ("lora_unet_down_blocks_9_attentions_0_proj_in", mods[good])]:
        down, up = lora_pair(g, mod, 4)
        sd[stem + ".lora_down.weight"], sd[stem + ".lora_up.weight"] = down, up
        sd[stem + ".alpha"] = torch.tensor(2.0)
    path = os.path.join(out_dir, "sd_kohya_unmatched.safetensors")
    save_file(sd, path, metadata={"ss_network_module": "networks.lora", "generator": GEN})
    sd = load_file(path)

    class S:
        base = sd_base

    dv = diffusers_view(S, sd)
    c = dv["components"]["unet"]
    assert c["unmatched_targets"] == ["down_blocks.9.attentions.0.proj_in"], c["unmatched_targets"]
    assert list(c["resolved"]) == [good]
    meta = {
        "generator": GEN, "lora_file": "sd_kohya_unmatched.safetensors", "base_model": SD_TINY_REL,
        "keys": sorted(sd),
        "matched": {"lora_unet_down_blocks_0_attentions_0_proj_in": "unet." + good},
        "unmatched_keys": ["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight",
                           "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight",
                           "lora_unet_down_blocks_9_attentions_0_proj_in.alpha"],
        "unmatched_module": "unet.down_blocks.9.attentions.0.proj_in (the tiny UNet has down_blocks 0 and 1)",
        "diffusers_key_conversion": {k: v for k, v in sorted(dv["after_lora_state_dict"].items())},
        "diffusers_behaviour": "diffusers' key conversion (lora_state_dict) renames the key without complaint; the "
                               "module is looked up by peft: with this file (one target found) peft 0.11.1 wraps only "
                               "the found module and diffusers logs 'Loading adapter weights from state_dict led to "
                               "unexpected keys not found in the model: [...down_blocks.9...]'; a file whose targets "
                               "are all missing raises ValueError('Target modules {...} not found in the base model. "
                               "Please check the target modules and try again.')",
        "expected": "a loader should report lora_unet_down_blocks_9_attentions_0_proj_in as unmatched",
    }
    write_json(os.path.join(out_dir, "sd_kohya_unmatched.json"), jsonable(meta))


OUT_FILES_SUFFIX = (".safetensors", ".json")


def build_all(out):
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith(OUT_FILES_SUFFIX):
            os.remove(os.path.join(out, f))
    sd_base = Base("sd", sd_tiny_dir())
    xl_base = Base("sdxl", sdxl_tiny_dir())
    summary = {}
    for i, spec in enumerate(specs(sd_base, xl_base)):
        summary[spec.name] = make_set(spec, out, SEED + 10 * i)
    make_unmatched(sd_base, out, SEED + 100)
    return summary


def file_hashes(root):
    res = {}
    for f in sorted(os.listdir(root)):
        if f.endswith(OUT_FILES_SUFFIX) and f != "generation_info.json":
            with open(os.path.join(root, f), "rb") as fh:
                res[f] = hashlib.sha256(fh.read()).hexdigest()
    return res


def base_hashes():
    res = {}
    for rel, d in [(SD_TINY_REL, sd_tiny_dir()), (SDXL_TINY_REL, sdxl_tiny_dir())]:
        for sub in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                    "text_encoder_2/model.safetensors"]:
            p = os.path.join(d, sub)
            if os.path.exists(p):
                with open(p, "rb") as fh:
                    res["%s/%s" % (rel, sub)] = hashlib.sha256(fh.read()).hexdigest()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "lora"))
    ap.add_argument("--check-determinism", action="store_true",
                    help="generate a second time (new process) into a temporary folder and require identical files")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    assert not USE_PEFT_BACKEND, "peft is installed: this generator documents the peft-less path"
    summary = build_all(out)
    det = "not checked"
    if args.check_determinism:
        det = C.rerun_determinism([os.path.abspath(__file__)], out, file_hashes, "lora_refgen_")
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f.endswith(OUT_FILES_SUFFIX)}
    info = {"generator": GEN, "reference_sources": REF_VERSIONS, "versions": M.versions(),
            "torch_threads": torch.get_num_threads(), "determinism_rerun": det,
            "base_models": {"sd": SD_TINY_REL, "sdxl": SDXL_TINY_REL},
            "base_model_sha256 (the references hold for these weights only)": base_hashes(), "summary": summary,
            "bytes": sizes, "total_bytes": sum(sizes.values())}
    write_json(os.path.join(out, "generation_info.json"), jsonable(info))
    print(json.dumps(jsonable(summary), indent=1))
    print("determinism:", det)
    print("bytes:", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
