"""What every stipple reference-set generator shares: finding ../shared's refgen (make_sets.py, which sets up
the reference sources on sys.path, torch's threads and the noise injector), the tiny SD 1.x pipeline of the
conformance set, and the JSON/sha256 helpers.  Import it before torch:

    import refgen_common as C
    M = C.make_sets()   # make_sets, set up (paths, noise injector)
"""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SD_TINY_REL = "../shared/conformance/sd_tiny"  # from the repository root, as the C++ tests reference it


def refgen_dir():
    for d in [os.environ.get("REFGEN_DIR"), os.path.join(os.path.dirname(REPO), "shared", "tools", "refgen"),
              "/work/shared/tools/refgen"]:
        if d and os.path.exists(os.path.join(d, "make_sets.py")):
            return d
    raise SystemExit("make_sets.py not found: set REFGEN_DIR to the shared tools/refgen folder")


def make_sets(setup=True, noise=True):
    """../shared's make_sets module (importing it puts the reference sources of REF_SRC on sys.path); with `setup`
    its stubs and paths are set up, with `noise` its injector replaces diffusers' randn_tensor."""
    if not os.environ.get("REF_SRC"):
        raise SystemExit("set REF_SRC (folder with diffusers/, transformers/, huggingface_hub/ source trees)")
    d = refgen_dir()
    if d not in sys.path:
        sys.path.insert(0, d)
    import make_sets as M
    if setup:
        M._setup_paths()
    if noise:
        M.install_noise_injector()
    return M


def input_hooks(M):
    """make_sets' forward-output hooks (M.Hooks) plus forward-input hooks: Hooks(model, names,
    input_names) also records each input_names module's first positional argument as
    "input.<name>"."""

    class Hooks(M.Hooks):
        def __init__(self, model, names, input_names=()):
            super().__init__(model, names)
            mods = dict(model.named_modules())
            for n in input_names:
                def pre(mod, inp, n=n):
                    self.rec["input." + n] = M.f32(inp[0])

                self.handles.append(mods[n].register_forward_pre_hook(pre))

    return Hooks


def shared_root():
    return os.path.dirname(os.path.dirname(refgen_dir()))  # .../shared


def sd_tiny_dir():
    return os.environ.get("SD_TINY_DIR") or os.path.join(shared_root(), "conformance", "sd_tiny")


def jsonable(x):
    def fix(o):
        if isinstance(o, float) and not math.isfinite(o):
            return "nan" if o != o else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [fix(v) for v in o]
        return o

    return fix(json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else list(o))))


def write_json(path, obj, width=240):
    """Indented JSON; a dict or list of scalars (or of lists of scalars) that fits in `width` goes on one line,
    and a list of numbers always does."""
    def flat(o):
        return not isinstance(o, (dict, list)) or (isinstance(o, list) and all(not isinstance(x, (dict, list)) for x in o))

    def dump(o, ind):
        one = json.dumps(o, ensure_ascii=False)
        if isinstance(o, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in o):
            return one
        vals = list(o.values()) if isinstance(o, dict) else (o if isinstance(o, list) else None)
        if vals is None or (all(flat(v) for v in vals) and len(one) + ind <= width):
            return one
        pad = " " * (ind + 2)
        if isinstance(o, dict):
            items = ["%s%s: %s" % (pad, json.dumps(k, ensure_ascii=False), dump(v, ind + 2)) for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        return "[\n" + ",\n".join(pad + dump(v, ind + 2) for v in o) + "\n" + " " * ind + "]"

    with open(path, "w", encoding="utf-8") as f:
        f.write(dump(jsonable(obj), 0) + "\n")


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def rerun_determinism(args, out, file_hashes, prefix):
    """Runs the generator again in a new process (`sys.executable` + `args` + `--out TMP`) and compares
    file_hashes(out) with file_hashes(TMP), each {file: sha256}: the record each set keeps as determinism_rerun,
    "bit-identical over N files (second run in a new process)" or {"differing_files": [...]}."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        subprocess.run([sys.executable] + list(args) + ["--out", tmp], check=True, stdout=subprocess.DEVNULL)
        a, b = file_hashes(out), file_hashes(tmp)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ("bit-identical over %d files (second run in a new process)" % len(a) if not diff
                else {"differing_files": diff})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
