"""diffusers' tiled VAE decode on the SD 1.x tiny VAE (../shared/conformance/sd_tiny/vae), for
stipple's AutoencoderKL::decode_tiled (tests/test_vae.cc).

    REF_SRC=/opt/ref-src /usr/bin/python3 tools/refgen/make_vae_tiling_set.py

Writes tests/data/vae_tiling/reference.safetensors: a smooth latent z [1, 4, 24, 40] (not a
multiple of the tile), its whole decode, and vae.tiled_decode with tile_latent_min_size 8
(tile_sample_min_size 16, overlap 0.25: stride 6 latents, blend 4 pixels, keep 12), plus
reference.json with those settings.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not os.environ.get("REF_SRC"):
    raise SystemExit("set REF_SRC (folder with diffusers/, transformers/, huggingface_hub/)")
sys.path.insert(0, "/work/shared/tools/refgen")
import make_sets as M  # noqa: E402

M._setup_paths()
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
vae = AutoencoderKL.from_pretrained(os.path.join(ROOT, "..", "shared", "conformance", "sd_tiny", "vae")).eval()
g = torch.Generator().manual_seed(11)
lo = torch.randn(1, 4, 6, 10, generator=g)
z = torch.nn.functional.interpolate(lo, size=(24, 40), mode="bilinear", align_corners=False).contiguous()
with torch.no_grad():
    whole = vae.decode(z).sample
    vae.enable_tiling()
    vae.tile_latent_min_size = 8
    vae.tile_sample_min_size = 16
    vae.tile_overlap_factor = 0.25
    tiled = vae.tiled_decode(z).sample
out = os.path.join(ROOT, "tests", "data", "vae_tiling")
os.makedirs(out, exist_ok=True)
save_file({"z": z, "whole": whole.contiguous(), "tiled": tiled.contiguous()},
          os.path.join(out, "reference.safetensors"), metadata={"format": "pt"})
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump({"vae": "../shared/conformance/sd_tiny/vae", "z": list(z.shape),
               "tile_latent_min_size": 8, "tile_sample_min_size": 16, "tile_overlap_factor": 0.25,
               "max_abs(tiled - whole)": float((tiled - whole).abs().max())}, f, indent=1)
print("max |tiled - whole|", float((tiled - whole).abs().max()))
