#!/usr/bin/env python3
"""Generate tests/data/prompt_weighting/: A1111's conditioning for emphasized, BREAK-split and long prompts, made by
A1111's own code (modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWords, modules/prompt_parser.py
parse_prompt_attention, modules/sd_emphasis.py "Original"), run unchanged on the tiny SD 1.x text encoder and the real
CLIP tokenizer of ../shared/conformance/sd_tiny (transformers CLIPTextModel and CLIPTokenizer).

    REF_SRC=/opt/ref-src A1111_SRC=/opt/ref-src/a1111 /usr/bin/python3 tools/refgen/make_prompt_weighting_set.py \
        [--out tests/data/prompt_weighting] [--check-determinism]

A1111_SRC holds modules/{prompt_parser,sd_hijack_clip,sd_emphasis}.py from AUTOMATIC1111/stable-diffusion-webui
(see tools/refgen/README.md for the commits).  The web UI's modules that these import and that matter nothing here
are stand-ins: modules.devices (the CPU), modules.sd_hijack (no textual-inversion embeddings) and modules.shared.opts
(the web UI's default settings, and the ones each case names).
"""
import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refgen_common as C  # noqa: E402

M = C.make_sets()
import torch  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

GEN = "tools/refgen/make_prompt_weighting_set.py"
A1111_COMMITS = {
    "modules/prompt_parser.py": "28bd8e142d5f77b71ae8d7d7140b5da1b3a49906",
    "modules/sd_hijack_clip.py": "00e09382cd85c77ac35545c7264855823dfc2eb1",
    "modules/sd_emphasis.py": "f8391b8a8ff61bf7ebcddc9b387e6c2f206ed056",
}
# The web UI's defaults (modules/shared_options.py) for what sd_hijack_clip reads.
DEFAULT_OPTS = dict(emphasis="Original", comma_padding_backtrack=20, CLIP_stop_at_last_layers=1,
                    use_old_emphasis_implementation=False, textual_inversion_add_hashes_to_infotext=True,
                    sdxl_clip_l_skip=False)


def words(n, w="cat"):
    return " ".join([w] * n)


# (name, texts given to forward() in one batch, option changes)
CASES = [
    ("weights", ["a (red:1.5) apple, (((shiny))) [dull] fruit"], {}),
    ("nested_escaped", ["\\(literal\\) (nested (deep:1.2) words:0.8) [[quiet]] (open"], {}),
    ("break", ["a cat BREAK a (dog:1.3) BREAK"], {}),
    ("comma_backtrack", [words(70) + ", " + words(10, "(dog:1.2)") + ", " + words(40, "[bird]")], {}),
    ("long_no_comma", [words(160, "tree")], {}),
    ("empty", [""], {}),
    ("clip_skip_2", ["a (red:1.5) apple, (((shiny))) [dull] fruit"], {"CLIP_stop_at_last_layers": 2}),
    ("emphasis_none", ["(red:1.5) apple BREAK pear"], {"emphasis": "None"}),
    ("no_backtrack", [words(70) + ", " + words(10, "dog")], {"comma_padding_backtrack": 0}),
    # a prompt and a negative prompt of different lengths, each through its own forward() (as the web UI encodes
    # them), the shorter then padded to the other's length with the encoding of "" (pad_cond_uncond)
    ("cond_uncond_padded", [words(100, "(sun:0.7)"), "a (moon:1.4)"], {}),
]


def load_a1111(opts):
    src = os.environ.get("A1111_SRC")
    if not src or not os.path.exists(os.path.join(src, "modules", "sd_hijack_clip.py")):
        raise SystemExit("set A1111_SRC to a folder with modules/{prompt_parser,sd_hijack_clip,sd_emphasis}.py")
    devices = types.ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    devices.torch_npu_set_device = lambda: None
    sd_hijack = types.ModuleType("modules.sd_hijack")
    sd_hijack.StableDiffusionModelHijack = object
    shared = types.ModuleType("modules.shared")
    shared.opts = opts
    for name, mod in [("modules.devices", devices), ("modules.sd_hijack", sd_hijack), ("modules.shared", shared)]:
        sys.modules[name] = mod
    sys.path.insert(0, src)
    import modules.sd_hijack_clip as hijack_clip
    return hijack_clip


def pad_cond_uncond(conds, empty):
    """What modules/sd_samplers_cfg_denoiser.py does with opts.pad_cond_uncond (emulated, not run: the sampler
    module needs the whole web UI): the shorter conditioning gets copies of the empty prompt's [1, 77, D] appended
    until the lengths match, then the two are one batch."""
    n = max(c.shape[1] for c in conds)
    out = []
    for c in conds:
        repeats = (n - c.shape[1]) // empty.shape[1]
        out.append(torch.cat([c, empty.repeat((c.shape[0], repeats, 1))], axis=1) if repeats else c)
    return torch.cat(out, 0)


class NoEmbeddings:
    def find_embedding_at_position(self, tokens, offset):
        return None, None


def build(out):
    torch.manual_seed(0)
    opts = types.SimpleNamespace(**DEFAULT_OPTS)
    hijack_clip = load_a1111(opts)
    d = C.sd_tiny_dir()
    wrapped = types.SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer")),
                                    transformer=CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder")).eval())
    hijack = types.SimpleNamespace(embedding_db=NoEmbeddings(), fixes=None, extra_generation_params={})
    model = hijack_clip.FrozenCLIPEmbedderWithCustomWords(wrapped, hijack)

    tensors, cases = {}, []
    for name, texts, changes in CASES:
        for k, v in DEFAULT_OPTS.items():
            setattr(opts, k, changes.get(k, v))
        with torch.no_grad():
            if len(texts) == 1:
                cond = model(texts)  # [1, 77 * chunks, D]
            else:
                cond = pad_cond_uncond([model([t]) for t in texts], model([""]))
        batch_chunks, token_count = model.process_texts(texts)
        for b, chunks in enumerate(batch_chunks):
            key = "%s.%d" % (name, b)
            tensors[key + ".ids"] = torch.tensor([c.tokens for c in chunks], dtype=torch.int64)
            tensors[key + ".multipliers"] = torch.tensor([c.multipliers for c in chunks], dtype=torch.float64)
        tensors[name + ".cond"] = cond
        cases.append({"name": name, "texts": texts, "options": {k: getattr(opts, k) for k in DEFAULT_OPTS},
                      "chunks": [len(c) for c in batch_chunks], "token_count": token_count,
                      "cond_shape": list(cond.shape),
                      "parsed": [model_parse(t, opts) for t in texts]})
    os.makedirs(out, exist_ok=True)
    M.save_ref(os.path.join(out, "reference.safetensors"), tensors, {"generator": GEN})
    return {
        "generator": GEN,
        "what": ("A1111's conditioning (FrozenCLIPEmbedderWithCustomWords.forward: parse_prompt_attention, chunks of "
                 "75 tokens with the comma backtrack and BREAK, per-chunk encoding, 'Original' emphasis: scale by "
                 "the weights, restore the chunk's mean) on ../shared/conformance/sd_tiny's tokenizer and text "
                 "encoder"),
        "a1111": A1111_COMMITS,
        "stand_ins": "modules.devices (cpu), modules.sd_hijack (no embeddings), modules.shared.opts (below)",
        "emulated": ("cond_uncond_padded: sd_samplers_cfg_denoiser.py's pad_cond_uncond (the encoding of '' appended "
                     "to the shorter); each prompt alone through FrozenCLIPEmbedderWithCustomWords.forward. (One "
                     "forward() over several texts, which the web UI does only for the steps of one edited prompt, "
                     "restores the mean over the whole batch, so its prompts' conditionings depend on each other.)"),
        "default_opts": DEFAULT_OPTS,
        "tensors": ("<case>.<b>.ids [chunks, 77] int64 and <case>.<b>.multipliers [chunks, 77] (stored f32) per "
                    "prompt b of the batch; <case>.cond [batch, 77 * chunks, 32] f32"),
        "sd_tiny_text_encoder_sha256": C.sha256(os.path.join(d, "text_encoder", "model.safetensors")),
        "cases": cases,
    }


def model_parse(text, opts):
    from modules import prompt_parser
    return prompt_parser.parse_prompt_attention(text) if opts.emphasis != "None" else [[text, 1.0]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(C.REPO, "tests", "data", "prompt_weighting"))
    ap.add_argument("--check-determinism", action="store_true",
                    help="generate a second time (new process) into a temporary folder and require identical files")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    ref = build(out)
    ref["versions"] = M.versions()
    ref["determinism_rerun"] = "not checked"
    C.write_json(os.path.join(out, "reference.json"), ref)
    if args.check_determinism:
        files = ("reference.safetensors", "reference.json")
        hashes = lambda d: {f: C.sha256(os.path.join(d, f)) for f in files if os.path.exists(os.path.join(d, f))}
        ref["determinism_rerun"] = C.rerun_determinism([os.path.abspath(__file__)], out, hashes, "pw_refgen_")
        C.write_json(os.path.join(out, "reference.json"), ref)
        print("determinism:", ref["determinism_rerun"])
        if isinstance(ref["determinism_rerun"], dict):
            raise SystemExit("not deterministic")
    print("bytes:", {f: os.path.getsize(os.path.join(out, f)) for f in ("reference.safetensors", "reference.json")})


if __name__ == "__main__":
    main()
