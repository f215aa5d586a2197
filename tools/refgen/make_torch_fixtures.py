"""PyTorch checkpoint fixtures for stipple's restricted unpickler (tests/test_torch_checkpoint.cc).

Run with Debian's python3-torch:  /usr/bin/python3 tools/refgen/make_torch_fixtures.py
Writes tests/data/torch/:
  basic.ckpt          {"state_dict": OrderedDict(...), "global_step", "epoch", "callbacks"}: every
                      storage dtype, a strided view, a Parameter, a scalar, an empty tensor, and
                      Lightning-style metadata (a ModelCheckpoint object, a numpy scalar)
  basic.json          each tensor's dtype, shape and values (flattened, as float or int)
  nested.pt           a textual-inversion-style dict: {"string_to_param": {"*": tensor}, ...}
  code.ckpt           a pickle that calls os.system (must be refused by name, never run)
  sdxl_tiny.ckpt      tests/data/sdxl_tiny_single_file.safetensors re-saved by torch.save as a
                      Lightning checkpoint ({"state_dict": ...}), with a numpy global_step
"""
import collections
import json
import os
import sys
import types

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "torch")


def lightning_checkpoint_class():
    # A stand-in with Lightning's module path, so the pickle names the global real files name.
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    class ModelCheckpoint:
        def __init__(self):
            self.monitor = None
            self.best_model_score = None
    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ["pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[mod.__name__] = mod
    return ModelCheckpoint


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(3, 4, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(2, 3, generator=g)
    sd["f16"] = torch.randn(4, generator=g).half()
    sd["bf16"] = torch.randn(2, 2, generator=g).bfloat16()
    sd["f64"] = torch.randn(3, generator=g).double()
    sd["i64"] = torch.arange(-3, 3, dtype=torch.int64)
    sd["i32"] = torch.tensor([-7, 0, 9], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["column"] = big[:, 1]                 # strided view of a 12-element storage
    sd["transposed"] = big.t()               # non-contiguous 2-D
    sd["offset"] = big[1]                    # contiguous view at a storage offset
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 5)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as module.state_dict() has
    ckpt = {"state_dict": sd, "global_step": np.int64(1234), "epoch": 7,
            "callbacks": {"ModelCheckpoint": lightning_checkpoint_class()()},
            "pytorch-lightning_version": "1.4.2"}
    torch.save(ckpt, os.path.join(OUT, "basic.ckpt"))
    desc = {}
    for k, t in sd.items():
        t = t.detach()
        vals = t.reshape(-1).float().tolist() if t.is_floating_point() else t.reshape(-1).long().tolist()
        desc[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": vals}
    with open(os.path.join(OUT, "basic.json"), "w") as f:
        json.dump(desc, f, indent=1)

    emb = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 8, generator=g)},
           "name": "tiny-style", "step": 500}
    torch.save(emb, os.path.join(OUT, "nested.pt"))

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))
    RunsCode.__qualname__ = "RunsCode"
    RunsCode.__module__ = "__main__"
    globals()["RunsCode"] = RunsCode
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode()},
               os.path.join(OUT, "code.ckpt"))

    sys.path.insert(0, "/work/shared/tools/refgen/stubs")
    from safetensors.torch import load_file  # the numpy stand-in of the safetensors package
    xl = load_file(os.path.join(ROOT, "tests", "data", "sdxl_tiny_single_file.safetensors"))
    torch.save({"state_dict": collections.OrderedDict(sorted(xl.items())),
                "global_step": np.int64(10), "epoch": 1},
               os.path.join(OUT, "sdxl_tiny.ckpt"))


if __name__ == "__main__":
    main()
