#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/ (small valid inputs, a few KB each).

Run from anywhere: python3 fuzz/make_corpus.py. Needs ../shared (the conformance configs). The
single_file seeds (CompVis key lists of the tiny conformance pipeline) are kept as they are; this
script leaves them alone. Crash inputs kept as regression seeds are named crash-* and kept too.
"""
import json
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(ROOT, "..", "..", "shared")
CORPUS = os.path.join(ROOT, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    assert len(data) < 20000, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors: whole files --------------------------------------------------------------
def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] in data order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


write("safetensors", "f32_f16_metadata", safetensors(
    [("w", "F32", [2, 3], struct.pack("<6f", *range(6))),
     ("b", "F16", [3], struct.pack("<3e", 0.5, -1.0, 2.0))],
    {"format": "pt", "note": "seed"}))
write("safetensors", "integers_widened", safetensors(
    [("ids", "I64", [2], struct.pack("<2q", 7, -7)),
     ("mask", "BOOL", [4], bytes([0, 1, 1, 0])),
     ("u8", "U8", [2, 2], bytes([1, 2, 3, 255])),
     ("i16", "I16", [2], struct.pack("<2h", -3, 3)),
     ("u32", "U32", [1], struct.pack("<I", 4000000000))]))
write("safetensors", "bf16_f64_scalar_empty", safetensors(
    [("scalar", "F64", [], struct.pack("<d", 3.25)),
     ("empty", "F32", [0, 4], b""),
     ("bf", "BF16", [2], b"\x80\x3f\x00\x40")]))
write("safetensors", "unsupported_and_unaligned", safetensors(
    [("odd", "U8", [3], b"abc"),
     ("f", "F32", [1], struct.pack("<f", 1.0)),
     ("u64", "U64", [1], struct.pack("<Q", 1)),
     ("f8", "F8_E4M3", [2], b"\x01\x02")], pad=False))
write("safetensors", "nul_padded_header", struct.pack("<Q", 16) + b"{}" + b"\0" * 14)

# ---- JSON configs: first byte picks the reader (fuzz_json_config.cc), '0' + 0 .. '0' + 7 -----
CONF = os.path.join(SHARED, "conformance")
for digit, rel in [("0", "sd_tiny/unet/config.json"), ("0", "sd_tiny_inpaint/unet/config.json"),
                   ("1", "sd_tiny/vae/config.json"), ("1", "dit_tiny/vae/config.json"),
                   ("2", "sd_tiny/text_encoder/config.json"),
                   ("4", "dit_tiny/transformer/config.json"),
                   ("4", "dit_transformer/transformer/config.json"),
                   ("6", "sd_tiny/scheduler/scheduler_config.json"),
                   ("6", "schedulers/dpmpp_2m_karras_eps/scheduler/scheduler_config.json"),
                   ("6", "schedulers/unipc_v/scheduler/scheduler_config.json"),
                   ("7", "sd_tiny/unet/config.json")]:
    with open(os.path.join(CONF, rel), "rb") as f:
        text = f.read()
    write("json_config", digit + "_" + rel.replace("/", "_"), digit.encode() + text)
write("json_config", "3_clip_vision_config.json", "3" + json.dumps({
    "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_channels": 3, "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 16}, indent=1))
write("json_config", "5_pixart_config.json", "5" + json.dumps({
    "_class_name": "PixArtTransformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8,
    "in_channels": 4, "out_channels": 8, "num_layers": 2, "sample_size": 8, "patch_size": 2,
    "cross_attention_dim": 16, "caption_channels": 32, "activation_fn": "gelu-approximate",
    "norm_type": "ada_norm_single", "norm_eps": 1e-6, "interpolation_scale": None,
    "use_additional_conditions": False}, indent=1))
write("json_config", "7_lenient_numbers.json",
      '7{"a": Infinity, "b": -Infinity, "c": NaN, "d": [1, 2.0, "NaN"], "e": "Infinity", '
      '"f": true, "g": null, "h": ["x", "y"]}')

# ---- PNG: small images with text chunks ------------------------------------------------------
def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png(width, height, bit_depth, color, rows, extra=b"", interlace=0):
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, interlace)
    raw = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PARAMS = (b"a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, "
          b"Seed: 7, Size: 4x4, Model: sd_tiny")
rgba = [bytes(v for x in range(4) for v in (x * 60, y * 60, 128, 255)) for y in range(4)]
write("png", "rgba_4x4_text_parameters",
      png(4, 4, 8, 6, rgba, chunk(b"tEXt", b"parameters\0" + PARAMS)))
write("png", "rgb_4x4_ztxt", png(4, 4, 8, 2, [bytes(12)] * 4,
                                 chunk(b"zTXt", b"parameters\0\0" + zlib.compress(PARAMS))))
write("png", "grey_4x4_itxt", png(4, 4, 8, 0, [bytes((0, 85, 170, 255))] * 4,
                                  chunk(b"iTXt", b"parameters\0\0\0\0\0" + "caf\u00e9 \u2615".encode())))
write("png", "palette_2bit_trns",
      png(4, 4, 2, 3, [bytes((0b00011011,))] * 4,
          chunk(b"PLTE", bytes((255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9))) +
          chunk(b"tRNS", bytes((0, 128)))))
write("png", "grey16_interlaced", png(4, 4, 16, 0, [bytes(8)] * 4, interlace=1))
write("png", "grey_trns_4x4", png(4, 4, 8, 0, [bytes((0, 85, 170, 255))] * 4,
                                  chunk(b"tRNS", struct.pack(">H", 0))))
write("png", "grey_alpha_4x4", png(4, 4, 8, 4, [bytes((9, 255) * 4)] * 4))

# ---- CLIP tokenizer: prompts -----------------------------------------------------------------
for name, text in [
        ("plain", "a photograph of an astronaut riding a horse"),
        ("weights_and_punct", "(masterpiece:1.2), best quality, 8k, [blurry], don't, it's"),
        ("special_tokens", "<|startoftext|>a cat<|endoftext|> sitting on a mat"),
        ("unicode", "Caf\u00e9 na\u00efve \u0130stanbul \u03a3\u039f\u03a3 \u6771\u4eac\u90fd \U0001f600 \ufb01"),
        ("whitespace_controls", "tab\there\r\nnew\u200bline\u00a0nbsp \x00 end")]:
    write("clip_tokenizer", name, text)
write("clip_tokenizer", "invalid_utf8", b"caf\xc3 \xff\xfe half \xe2\x82")
