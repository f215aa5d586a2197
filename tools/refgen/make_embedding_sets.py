#!/usr/bin/env python3
"""Generate the textual-inversion (embedding) reference sets under tests/data/embeddings/: small embedding files in
the formats people download (A1111 .pt, single-vector safetensors, SDXL clip_l/clip_g safetensors) and what the real
diffusers 0.29.2 code (TextualInversionLoaderMixin.load_textual_inversion, maybe_convert_prompt, encode_prompt) makes
of them with the SD 1.x tiny pipeline of the shared conformance set and tests/data/sdxl_tiny.

    REF_SRC=/opt/ref-src /usr/bin/python3 tools/refgen/make_embedding_sets.py [--out tests/data/embeddings] [--check-determinism]

Everything stored under `sd.*` / `sdxl.*` is computed by diffusers / transformers code, run unchanged.  The
`*.a1111_emulated.*` values and the A1111 comparisons in reference.json are NOT A1111 code: they reproduce A1111's
method (token-sequence match, placeholder ids, rows of the token-embedding output replaced; see
modules/textual_inversion/textual_inversion.py, modules/sd_hijack_clip.py and modules/sd_hijack.py
EmbeddingsWithFixes) with the same transformers models.  See tools/refgen/README.md.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refgen_common as C  # noqa: E402
from refgen_common import HERE, REPO, jsonable, sd_tiny_dir, sha256, shared_root, write_json  # noqa: E402,F401

REFGEN_DIR = C.refgen_dir()
M = C.make_sets(setup=False, noise=False)  # set up below, after the imports, as before
from make_sets import NOISE, f32, gen  # noqa: E402

import torch  # noqa: E402
import diffusers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

M._setup_paths()
M.install_noise_injector()
assert diffusers.__version__ == "0.29.2", diffusers.__version__

from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

GEN = "tools/refgen/make_embedding_sets.py"
SEED = 9090
SD_TINY_REL = "../shared/conformance/sd_tiny"  # from the repository root, as the C++ tests reference it
SDXL_TINY_REL = "tests/data/sdxl_tiny"
REF_VERSIONS = {
    "diffusers": "0.29.2 (tag v0.29.2, c586aadef6bb66d355fa40a2b95a0bea8a6fe79c)",
    "transformers": "4.39.0.dev0 (duyy97/transformers ebebfbf58043b749f47a2f701a161f0c12e5f107)",
    "huggingface_hub": "0.23.4 (tag v0.23.4, 4c7aa33bac0b4fb59796e76fcc9cd7f5ff0fd426)",
    "A1111 (read, not run; only its method is emulated)": (
        "AUTOMATIC1111/stable-diffusion-webui modules/textual_inversion/textual_inversion.py @22ecb78b51f7, "
        "modules/sd_hijack_clip.py @5ad03e65863b, modules/sd_hijack.py EmbeddingsWithFixes"),
}

SD_PROMPTS = [("style", "a photo in tiny-style"), ("one", "tiny-one, a red circle"), ("both", "tiny-one in tiny-style")]
SD_NEG = dict(prompt="a red circle", negative_prompt="tiny-one")
TXT2IMG = dict(prompt="a photo in tiny-style", negative_prompt="tiny-one", num_inference_steps=2, guidance_scale=7.5)
SDXL_PROMPT = "a photo in tiny-xl"
# Prompts that show where diffusers' matching differs from a token-sequence match (tokenized only, no tensors)
EDGE_PROMPTS = ["Tiny-One, a red circle", "xtiny-onex", "a tiny - one", "tiny-style_1 here", "tiny-style_1 and tiny-style"]

# Embedding vectors: N(0,1) * VEC_SCALE / sqrt(dim); the tiny token tables are N(0,1) / sqrt(dim) (make_sets
# randomize_), so the learned vectors are twice as large as ordinary token rows, as trained embeddings tend to be.
VEC_SCALE = 2.0
OUT_FILES = ("tiny-style.pt", "tiny-one.safetensors", "tiny-xl.safetensors", "reference.safetensors",
             "reference.json")




def sdxl_tiny_dir():
    return os.path.join(REPO, SDXL_TINY_REL)





# ------------------------------------------------------------------------------------------------
# the embedding files
# ------------------------------------------------------------------------------------------------


def vecs(g, n, dim):
    return (torch.randn((n, dim), generator=g, dtype=torch.float32) * (VEC_SCALE / math.sqrt(dim))).contiguous()


def write_embedding_files(out):
    g = gen(SEED)
    style = vecs(g, 2, 32)
    one = vecs(g, 1, 32)
    xl_l, xl_g = vecs(g, 2, 32), vecs(g, 2, 40)
    # A1111's Embedding.save (modules/textual_inversion/textual_inversion.py).  After training, A1111's vec is a leaf
    # tensor with requires_grad=True and is saved as such; the pickle then carries requires_grad True.
    vec = style.clone().requires_grad_(True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "tiny-style", "step": 100,
                "sd_checkpoint": None, "sd_checkpoint_name": None}, os.path.join(out, "tiny-style.pt"))
    # single-vector safetensors: one tensor under "emb_params" (kohya sd-scripts' TI safetensors key; A1111 reads any
    # one-key file through its "diffuser concepts" branch)
    save_file({"emb_params": one}, os.path.join(out, "tiny-one.safetensors"))
    # SDXL: clip_l (text_encoder, CLIP ViT-L) and clip_g (text_encoder_2, OpenCLIP bigG) vectors
    save_file({"clip_g": xl_g, "clip_l": xl_l}, os.path.join(out, "tiny-xl.safetensors"))
    return {"tiny-style": style, "tiny-one": one, "tiny-xl.clip_l": xl_l, "tiny-xl.clip_g": xl_g}


# ------------------------------------------------------------------------------------------------
# A1111's method, emulated with transformers models (for comparison only)
# ------------------------------------------------------------------------------------------------


def a1111_ids(tok, prompt, embeddings, pad_id):
    """modules/sd_hijack_clip.py tokenize_line for one chunk (emphasis off / all weights 1): the prompt is tokenized
    with the plain tokenizer (no added tokens); an embedding matches where the token ids of its NAME occur
    (EmbeddingDatabase.find_embedding_at_position, longest first); its vectors go in as placeholder ids 0, and
    PromptChunkFix(offset) remembers where.  Returns the 77 ids, the fixes [(offset, name)] and the name ids."""
    ids = tok([prompt], add_special_tokens=False)["input_ids"][0]
    name_ids = {n: tok([n], add_special_tokens=False)["input_ids"][0] for n in embeddings}
    lookup = sorted(name_ids.items(), key=lambda kv: len(kv[1]), reverse=True)
    toks, fixes, i = [], [], 0
    while i < len(ids):
        hit = next(((n, nid) for n, nid in lookup if ids[i:i + len(nid)] == nid), None)
        if hit is None:
            toks.append(ids[i])
            i += 1
            continue
        fixes.append((len(toks), hit[0]))
        toks += [0] * embeddings[hit[0]].shape[0]
        i += len(hit[1])
    assert len(toks) <= 75
    chunk = [tok.bos_token_id] + toks + [tok.eos_token_id] * (75 - len(toks)) + [tok.eos_token_id]
    if pad_id != tok.eos_token_id:  # process_tokens: pad after the first end token (SD2 / OpenCLIP: pad id 0)
        first = chunk.index(tok.eos_token_id)
        chunk = chunk[:first + 1] + [pad_id] * (len(chunk) - first - 1)
    return chunk, fixes, name_ids


def a1111_unpadded(tok, prompt, embeddings):
    chunk = a1111_ids(tok, prompt, embeddings, tok.eos_token_id)[0]
    return chunk[:chunk.index(tok.eos_token_id) + 1]


def a1111_forward(te, chunk, fixes, embeddings):
    """EmbeddingsWithFixes: the token-embedding output row offset+1+k (after the start token) is replaced by vector k.
    Position embeddings are added afterwards, as for any token."""
    emb = te.text_model.embeddings.token_embedding

    def hook(mod, inp, out):
        out = out.clone()
        for off, name in fixes:
            v = embeddings[name]
            n = min(out.shape[1] - off - 1, v.shape[0])
            out[0, off + 1:off + 1 + n] = v[:n]
        return out

    h = emb.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return te(torch.tensor([chunk]), output_hidden_states=True)
    finally:
        h.remove()


def maxdiff(a, b):
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------------
# SD 1.x
# ------------------------------------------------------------------------------------------------


def sd_set(out, vec, T):
    pipe = M.load_pipe("StableDiffusionPipeline", sd_tiny_dir())
    tok, te = pipe.tokenizer, pipe.text_encoder
    vocab0, rows0 = len(tok), te.get_input_embeddings().weight.shape[0]
    table0 = te.get_input_embeddings().weight.detach().clone()
    # A1111 .pt: no token= -> diffusers takes the token from the file's "name" field
    pipe.load_textual_inversion(os.path.join(out, "tiny-style.pt"))
    # one-key file: without token= diffusers would name the token after the key ("emb_params")
    pipe.load_textual_inversion(os.path.join(out, "tiny-one.safetensors"), token="tiny-one")
    added = {k: v for k, v in tok.added_tokens_encoder.items() if v >= vocab0}
    table = te.get_input_embeddings().weight.detach()
    assert torch.equal(table[:rows0], table0), "load_textual_inversion changed existing rows"
    T["sd.token_embedding.added_rows"] = f32(table[rows0:])
    assert torch.equal(table[added["tiny-style"]], vec["tiny-style"][0])
    assert torch.equal(table[added["tiny-style_1"]], vec["tiny-style"][1])
    assert torch.equal(table[added["tiny-one"]], vec["tiny-one"][0])

    plain_tok = CLIPTokenizer.from_pretrained(os.path.join(sd_tiny_dir(), "tokenizer"))
    plain_te = CLIPTextModel.from_pretrained(os.path.join(sd_tiny_dir(), "text_encoder")).eval()
    a1111_vecs = {"tiny-style": vec["tiny-style"], "tiny-one": vec["tiny-one"]}

    prompts = {}
    for tag, p in SD_PROMPTS:
        conv = pipe.maybe_convert_prompt(p, tok)
        ids = tok(conv, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            pe, npe = pipe.encode_prompt(p, torch.device("cpu"), 1, False)
        assert npe is None
        T["sd.%s.input_ids" % tag] = ids
        T["sd.%s.prompt_embeds" % tag] = f32(pe)
        with torch.no_grad():
            direct = te(ids)[0]
        assert torch.equal(direct, pe)
        chunk, fixes, name_ids = a1111_ids(plain_tok, p, a1111_vecs, plain_tok.pad_token_id)
        a = a1111_forward(plain_te, chunk, fixes, a1111_vecs).last_hidden_state
        prompts[tag] = {
            "prompt": p, "converted": conv, "tokens": tok.tokenize(conv), "input_ids": ids[0].tolist(),
            "keys": ["sd.%s.input_ids" % tag, "sd.%s.prompt_embeds" % tag],
            "a1111_emulated": {"input_ids": chunk, "fixes (offset in the chunk without the start token, name)": fixes,
                               "max_abs_diff_to_diffusers_prompt_embeds": maxdiff(a, pe)},
        }

    # negative prompt with an embedding, classifier-free guidance on
    with torch.no_grad():
        pe, npe = pipe.encode_prompt(SD_NEG["prompt"], torch.device("cpu"), 1, True,
                                     negative_prompt=SD_NEG["negative_prompt"])
    nconv = pipe.maybe_convert_prompt(SD_NEG["negative_prompt"], tok)
    nids = tok(nconv, padding="max_length", max_length=pe.shape[1], truncation=True, return_tensors="pt").input_ids
    pids = tok(pipe.maybe_convert_prompt(SD_NEG["prompt"], tok), padding="max_length", max_length=77,
               truncation=True, return_tensors="pt").input_ids
    T["sd.negative.input_ids"], T["sd.negative.negative_input_ids"] = pids, nids
    T["sd.negative.prompt_embeds"], T["sd.negative.negative_prompt_embeds"] = f32(pe), f32(npe)
    negative = dict(SD_NEG, do_classifier_free_guidance=True, negative_converted=nconv,
                    input_ids=pids[0].tolist(), negative_input_ids=nids[0].tolist(),
                    keys=["sd.negative.input_ids", "sd.negative.negative_input_ids", "sd.negative.prompt_embeds",
                          "sd.negative.negative_prompt_embeds"],
                    note="encode_prompt runs maybe_convert_prompt on the negative prompt too; the negative text is "
                         "padded to the prompt's length (77) and encoded by the same text encoder")

    # a short txt2img run: the embeddings reach the UNet through both halves of the CFG batch
    vsf = pipe.vae_scale_factor
    hw = pipe.unet.config.sample_size
    lat = torch.randn((1, pipe.unet.config.in_channels, hw, hw), generator=gen(SEED + 1), dtype=torch.float32)
    rec = M.PipeRecorder(pipe)
    steps = []
    NOISE.set_queue([])
    with torch.no_grad():
        res = pipe(TXT2IMG["prompt"], negative_prompt=TXT2IMG["negative_prompt"],
                   num_inference_steps=TXT2IMG["num_inference_steps"], guidance_scale=TXT2IMG["guidance_scale"],
                   height=hw * vsf, width=hw * vsf, latents=lat.clone(), output_type="latent",
                   callback_on_step_end=M._step_cb(steps)).images
    rec.restore()
    noise_log = list(NOISE.log)
    NOISE.clear()
    r = rec.tensors()
    ehs = r["denoiser.encoder_hidden_states"]
    assert torch.equal(ehs[0], T["sd.negative.negative_prompt_embeds"][0])  # uncond (negative) row first
    assert torch.equal(ehs[1], T["sd.style.prompt_embeds"][0])
    T["sd.txt2img.latents_init"] = lat
    T["sd.txt2img.encoder_hidden_states"] = ehs
    T["sd.txt2img.timesteps"] = r["denoiser.timestep"]
    T["sd.txt2img.unet_sample"] = r["denoiser.sample"]
    T["sd.txt2img.unet_out"] = r["denoiser.out"]
    T["sd.txt2img.latents_after_step"] = torch.stack(steps)
    T["sd.txt2img.latents_out"] = f32(res)
    sc = pipe.scheduler
    txt2img = dict(TXT2IMG, height=hw * vsf, width=hw * vsf, eta=0.0, output_type="latent",
                   scheduler=sc.__class__.__name__, scheduler_config=dict(sc.config),
                   timesteps=[int(t) for t in sc.timesteps], noise_calls=noise_log,
                   keys=sorted(k for k in T if k.startswith("sd.txt2img.")),
                   note="encoder_hidden_states = cat([negative_prompt_embeds ('tiny-one'), prompt_embeds "
                        "('a photo in tiny-style')]); unet_sample/unet_out are per step [steps, 2, 4, h, w]; "
                        "noise_pred = uncond + guidance_scale * (text - uncond); no VAE decode")

    edge = {}
    for p in EDGE_PROMPTS:
        conv = pipe.maybe_convert_prompt(p, tok)
        edge[p] = {"converted": conv, "tokens": tok.tokenize(conv),
                   "input_ids (no padding)": tok(conv).input_ids,
                   "a1111_emulated_ids (up to the first end token)": a1111_unpadded(plain_tok, p, a1111_vecs)}
    name_ids = {n: plain_tok([n], add_special_tokens=False)["input_ids"][0] for n in a1111_vecs}
    return {
        "pipeline": SD_TINY_REL, "tokenizer_len_before": vocab0, "token_embedding_rows_before": rows0,
        "token_embedding_rows_after": int(table.shape[0]),
        "load_calls": ["pipe.load_textual_inversion('tiny-style.pt')  # token from the file's name field",
                       "pipe.load_textual_inversion('tiny-one.safetensors', token='tiny-one')"],
        "added_token_ids (diffusers, in load order)": added,
        "sd.token_embedding.added_rows": "token_embedding.weight[%d:%d] after loading = tiny-style[0], tiny-style[1], "
                                         "tiny-one[0] (equal to the file vectors bit for bit)" % (rows0, table.shape[0]),
        "prompts": prompts, "negative": negative, "txt2img": txt2img,
        "edge_prompts (tokenized only)": edge,
        "a1111_name_ids (plain tokenizer, no special tokens)": name_ids,
    }


# ------------------------------------------------------------------------------------------------
# SDXL
# ------------------------------------------------------------------------------------------------


def sdxl_set(out, vec, T):
    pipe = M.load_pipe("StableDiffusionXLPipeline", sdxl_tiny_dir())
    sd = load_file(os.path.join(out, "tiny-xl.safetensors"))
    n0 = {1: len(pipe.tokenizer), 2: len(pipe.tokenizer_2)}
    # as in the diffusers docs (SDXL textual inversion): each half into its own encoder/tokenizer, same token name
    pipe.load_textual_inversion(sd["clip_g"], token="tiny-xl", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(sd["clip_l"], token="tiny-xl", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    info = {"pipeline": SDXL_TINY_REL,
            "load_calls": ["sd = safetensors.torch.load_file('tiny-xl.safetensors')",
                           "pipe.load_textual_inversion(sd['clip_g'], token='tiny-xl', text_encoder=pipe.text_encoder_2, "
                           "tokenizer=pipe.tokenizer_2)",
                           "pipe.load_textual_inversion(sd['clip_l'], token='tiny-xl', text_encoder=pipe.text_encoder, "
                           "tokenizer=pipe.tokenizer)"]}
    p = SDXL_PROMPT
    with torch.no_grad():
        pe, npe, ppe, nppe = pipe.encode_prompt(p, device=torch.device("cpu"), num_images_per_prompt=1,
                                                do_classifier_free_guidance=False)
    assert npe is None and nppe is None
    T["sdxl.prompt_embeds"], T["sdxl.pooled_prompt_embeds"] = f32(pe), f32(ppe)
    enc = {}
    for i, (tok, te, key, dim) in enumerate([(pipe.tokenizer, pipe.text_encoder, "clip_l", 32),
                                             (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g", 40)], 1):
        tag = "text_encoder" if i == 1 else "text_encoder_2"
        added = {k: v for k, v in tok.added_tokens_encoder.items() if v >= n0[i]}
        table = te.get_input_embeddings().weight.detach()
        T["sdxl.%s.token_embedding.added_rows" % tag] = f32(table[n0[i]:])
        assert torch.equal(table[n0[i]:], vec["tiny-xl." + key])
        conv = pipe.maybe_convert_prompt(p, tok)
        ids = tok(conv, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        T["sdxl.%s.input_ids" % tag] = ids
        enc[tag] = {"file_key": key, "hidden_size": dim, "tokenizer_len_before": n0[i],
                    "added_token_ids (diffusers)": added, "converted": conv, "tokens": tok.tokenize(conv),
                    "input_ids": ids[0].tolist(), "pad_token": tok.pad_token, "pad_id": tok.pad_token_id,
                    "config eos_token_id": te.config.eos_token_id}
    ids2 = T["sdxl.text_encoder_2.input_ids"][0]
    eos2 = pipe.tokenizer_2.eos_token_id
    pooled_at = int(ids2.to(torch.int).argmax())
    eos_at = int((ids2 == eos2).nonzero()[0])
    with torch.no_grad():
        o2 = pipe.text_encoder_2(ids2[None], output_hidden_states=True)
    assert torch.equal(o2.text_embeds, ppe)
    # the text_embeds the projection gives at the end-of-text position (where A1111 / OpenCLIP pool)
    lhs = o2.last_hidden_state
    at_eos = pipe.text_encoder_2.text_projection(lhs[:, eos_at])
    T["sdxl.text_encoder_2.text_embeds_at_eos"] = f32(at_eos)

    # A1111's method, emulated
    plain = {"text_encoder": (CLIPTokenizer.from_pretrained(os.path.join(sdxl_tiny_dir(), "tokenizer")),
                              CLIPTextModel.from_pretrained(os.path.join(sdxl_tiny_dir(), "text_encoder")).eval(), "clip_l"),
             "text_encoder_2": (CLIPTokenizer.from_pretrained(os.path.join(sdxl_tiny_dir(), "tokenizer_2")),
                                CLIPTextModelWithProjection.from_pretrained(os.path.join(sdxl_tiny_dir(), "text_encoder_2")).eval(),
                                "clip_g")}
    parts, a_ids = [], {}
    a_pooled = None
    for tag, (tok, te, key) in plain.items():
        v = {"tiny-xl": vec["tiny-xl." + key]}
        # clip_l: pad = end token (FrozenCLIPEmbedder); clip_g: pad id 0 (FrozenOpenCLIPEmbedder2WithCustomWords)
        chunk, fixes, _ = a1111_ids(tok, p, v, tok.eos_token_id if tag == "text_encoder" else 0)
        o = a1111_forward(te, chunk, fixes, v)
        parts.append(o.hidden_states[-2])
        a_ids[tag] = chunk
        if tag == "text_encoder_2":
            a_pooled = o.text_embeds  # transformers pools at argmax(ids) (eos_token_id 2) = the end token here
    a_pe = torch.cat(parts, dim=-1)
    T["sdxl.a1111_emulated.pooled_prompt_embeds"] = f32(a_pooled)
    assert torch.equal(a_pooled, at_eos) or maxdiff(a_pooled, at_eos) < 1e-6
    info.update({
        "prompt": p, "encoders": enc,
        "encode_prompt": "pipe.encode_prompt('%s', device='cpu', num_images_per_prompt=1, "
                         "do_classifier_free_guidance=False) (prompt_2 = prompt)" % p,
        "prompt_embeds": "cat([text_encoder hidden_states[-2] (32), text_encoder_2 hidden_states[-2] (40)], -1)",
        "pooled_prompt_embeds": {
            "what": "text_encoder_2 text_embeds = text_projection(final_layer_norm(last layer)) at ONE position",
            "position_used_by_diffusers": pooled_at, "end_token_position": eos_at,
            "why": "text_encoder_2/config.json has eos_token_id 2 (as the real SDXL text_encoder_2), so transformers "
                   "4.39 CLIPTextTransformer pools at input_ids.argmax(-1), assuming the end token has the highest "
                   "id. The added tokens get ids above it (%s), so diffusers pools at the first 'tiny-xl' token, "
                   "not at the end token. transformers' own comment: 'A CLIP model with such eos_token_id in the "
                   "config can't work correctly with extra new tokens added'." % enc["text_encoder_2"]["added_token_ids (diffusers)"],
            "max_abs_diff_to_text_embeds_at_eos": maxdiff(ppe, at_eos),
        },
        "a1111_emulated": {
            "input_ids": a_ids,
            "max_abs_diff_prompt_embeds_to_diffusers": maxdiff(a_pe, pe),
            "max_abs_diff_pooled_to_diffusers": maxdiff(a_pooled, ppe),
            "note": "A1111 uses placeholder id 0 for the embedding positions, so OpenCLIP's pooling at "
                    "tokens.argmax(-1) (sgm FrozenOpenCLIPEmbedder2.pool) lands on the end token: its pooled "
                    "output is sdxl.a1111_emulated.pooled_prompt_embeds (= sdxl.text_encoder_2.text_embeds_at_eos), "
                    "not diffusers' sdxl.pooled_prompt_embeds. The per-token prompt_embeds agree.",
        },
    })
    return info


# ------------------------------------------------------------------------------------------------


TOKENIZATION_NOTES = {
    "diffusers_load": [
        "load_textual_inversion reads the file (safetensors first, else torch.load(weights_only=True)); a dict with "
        "'string_to_param' is A1111's (token = its 'name' unless token= is given, vectors = string_to_param['*']); a "
        "one-key dict is the diffusers form (token = the key, e.g. 'emb_params', unless token= is given); a bare "
        "tensor needs token=. An [n, dim] tensor with n > 1 is a multi-vector embedding.",
        "Multi-vector expansion (_extend_tokens_and_embeddings): n vectors become n added tokens named TOKEN, "
        "TOKEN_1, ..., TOKEN_{n-1}.",
        "The text encoder's token table is resized to len(tokenizer) + number of new tokens "
        "(resize_token_embeddings; the existing rows are kept bit for bit), then for each new token in order "
        "tokenizer.add_tokens(token) and weight[token_id] = vector. The ids are therefore appended after the "
        "tokenizer's vocabulary (len(tokenizer) = 1000 for the tiny tokenizers, 49408 for real CLIP) in load order: "
        "here tiny-style = 1000, tiny-style_1 = 1001, tiny-one = 1002 (SD); tiny-xl = 1000, tiny-xl_1 = 1001 in "
        "each SDXL tokenizer. The vectors enter the model only as these rows of the token embedding table; position "
        "embeddings are added to them like to any token.",
    ],
    "diffusers_prompt": [
        "encode_prompt first runs maybe_convert_prompt: the prompt is tokenized, and every added token that has "
        "TOKEN_1, TOKEN_2, ... is replaced in the TEXT (str.replace, all occurrences) by 'TOKEN TOKEN_1 ... "
        "TOKEN_{n-1}'. 'a photo in tiny-style' -> 'a photo in tiny-style tiny-style_1'. Single-vector tokens are "
        "left as they are. The negative prompt is converted the same way.",
        "Tokenizing (transformers slow tokenizer, PreTrainedTokenizer.tokenize): added tokens are cut out of the raw "
        "text FIRST, by exact, case-sensitive substring match (longest match, a trie), anywhere, even inside a word "
        "('xtiny-onex' -> 'x', 'tiny-one', 'x'); the added token itself becomes one id (no '</w>', no BPE). Only the "
        "text between added tokens goes through CLIP's lower-casing, the word regex and BPE, each piece on its own "
        "(so 'x' before an added token ends a word: 'x</w>'). Whitespace next to an added token is dropped (it is "
        "whitespace for the BPE pieces). 'Tiny-One' does not match (case), nor does 'tiny - one'.",
        "Then the usual CLIP framing: [bos] + ids, padded with the tokenizer's pad token to 77 and truncated to 77 "
        "with the end token kept; the text encoder is run on these ids.",
        "The names TOKEN_1 ... are ordinary added tokens: 'tiny-style_1' alone gives only id 1001 (the second "
        "vector; the trie takes the longest match). If the prompt has both 'tiny-style' and 'tiny-style_1', "
        "str.replace also rewrites the latter ('tiny-style_1' -> 'tiny-style tiny-style_1_1', which tokenizes as "
        "1000, 1001, then BPE of '_1'). See edge_prompts.",
        "This is the slow CLIPTokenizer (model_index.json names CLIPTokenizer; no `tokenizers` package here). A fast "
        "tokenizer may treat added tokens differently (normalized=True added tokens are matched after "
        "lower-casing); that is not what these references show.",
    ],
    "a1111 (from its source; not run)": [
        "A1111 adds no tokens and does not resize the token table. Each embedding is registered by name "
        "(the file name without extension for .pt/.bin/.safetensors) with the ids the plain CLIP tokenizer gives the "
        "NAME (no special tokens): 'tiny-style' -> the BPE ids of 'tiny', '-', 'style'.",
        "A prompt is tokenized with the plain tokenizer; at each position the token-id sequence is compared with the "
        "registered names (EmbeddingDatabase.find_embedding_at_position, longest first). A match is replaced by "
        "vectors-many placeholder ids 0 and a fix (offset). The match is on BPE tokens, so it is case-insensitive "
        "and follows CLIP's word splitting ('Tiny-One' and 'tiny - one' match, 'xtiny-onex' does not).",
        "sd_hijack.EmbeddingsWithFixes replaces the token-embedding OUTPUT rows offset+1 ... offset+n (after the "
        "start token) by the vectors; position embeddings are added after that. Multi-vector embeddings take n "
        "consecutive positions; there is no '_1' naming. For SDXL ('clip_l'/'clip_g' files) the CLIP-L encoder "
        "takes vec['clip_l'] and the OpenCLIP encoder vec['clip_g'] (textual_inversion_key).",
        "For the SD prompts here this gives the same prompt_embeds as diffusers (see prompts.*.a1111_emulated). For "
        "SDXL the pooled output differs: see sdxl.pooled_prompt_embeds.",
    ],
}


def build_all(out):
    os.makedirs(out, exist_ok=True)
    for f in OUT_FILES:
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    vec = write_embedding_files(out)
    T = {}
    sd = sd_set(out, vec, T)
    xl = sdxl_set(out, vec, T)
    M.save_ref(os.path.join(out, "reference.safetensors"), T, {"generator": GEN})
    files = {
        "tiny-style.pt": {
            "format": "A1111 torch.save (zip) of {'string_to_token': {'*': 265}, 'string_to_param': {'*': tensor}, "
                      "'name': 'tiny-style', 'step': 100, 'sd_checkpoint': None, 'sd_checkpoint_name': None}; the "
                      "tensor is float32, CPU storage, requires_grad=True (as A1111 saves a trained embedding)",
            "string_to_param['*']": [2, 32], "for": "SD 1.x (hidden 32)"},
        "tiny-one.safetensors": {"format": "one key (kohya sd-scripts' TI safetensors name)", "emb_params": [1, 32],
                                 "for": "SD 1.x"},
        "tiny-xl.safetensors": {"format": "SDXL embedding", "clip_l": [2, 32], "clip_g": [2, 40],
                                "for": "SDXL (clip_l -> text_encoder, clip_g -> text_encoder_2)"},
    }
    for f, d in files.items():
        d["values"] = "N(0,1) * %g / sqrt(dim), torch.Generator seed %d, drawn in the order tiny-style, tiny-one, " \
                      "tiny-xl clip_l, clip_g" % (VEC_SCALE, SEED)
    ref = {
        "generator": GEN, "reference_sources": REF_VERSIONS,
        "base_models": {"sd": SD_TINY_REL, "sdxl": SDXL_TINY_REL},
        "base_model_sha256 (the references hold for these weights only)": base_hashes(),
        "files": files,
        "tokenization": TOKENIZATION_NOTES,
        "sd": sd, "sdxl": xl,
        "tensors": {k: list(v.shape) for k, v in sorted(T.items())},
        "dtypes": "float tensors F32, ids I64",
    }
    return ref


def file_hashes(root):
    return {f: sha256(os.path.join(root, f)) for f in OUT_FILES if os.path.exists(os.path.join(root, f))}


def base_hashes():
    res = {}
    for rel, d in [(SD_TINY_REL, sd_tiny_dir()), (SDXL_TINY_REL, sdxl_tiny_dir())]:
        for sub in ["text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                    "unet/diffusion_pytorch_model.safetensors"]:
            p = os.path.join(d, sub)
            if os.path.exists(p) and not (rel == SDXL_TINY_REL and sub.startswith("unet")):
                res["%s/%s" % (rel, sub)] = sha256(p)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "embeddings"))
    ap.add_argument("--check-determinism", action="store_true",
                    help="generate a second time (new process) into a temporary folder and require identical files")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    ref = build_all(out)
    ref["versions"] = M.versions()
    ref["bytes (without reference.json)"] = {f: os.path.getsize(os.path.join(out, f)) for f in OUT_FILES
                                             if f != "reference.json"}
    ref["determinism_rerun"] = "not checked"
    write_json(os.path.join(out, "reference.json"), ref)
    det = "not checked"
    if args.check_determinism:
        det = C.rerun_determinism([os.path.abspath(__file__)], out, file_hashes, "emb_refgen_")
        ref["determinism_rerun"] = det
        write_json(os.path.join(out, "reference.json"), ref)
    print("determinism:", det)
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in OUT_FILES}
    print("bytes:", sizes, "total", sum(sizes.values()))
    if isinstance(det, dict):
        raise SystemExit("not deterministic: %s" % det)


if __name__ == "__main__":
    main()
