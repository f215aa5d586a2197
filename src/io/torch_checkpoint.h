// PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin` written by torch.save since PyTorch 1.6):
// a ZIP archive (io/zip_reader.h) holding `<root>/data.pkl`, a pickle of the saved object, and
// `<root>/data/<key>`, the raw bytes of each storage the pickle refers to by persistent id.
//
// The pickle is read WITHOUT running anything: a small pickle machine (protocols 2 to 5) that
// builds plain values (None, bools, ints, floats, strings, bytes, tuples, lists, dicts) and knows
// only the globals a state dict is made of:
//   collections.OrderedDict                           -> a dict
//   torch._utils._rebuild_tensor_v2 / _rebuild_tensor -> a tensor over a storage
//   torch._utils._rebuild_parameter(_with_state)      -> its tensor
//   torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage -> storage dtypes
//   _codecs.encode                                    -> bytes (how protocol 2 pickles bytes)
// and, as inert placeholders that are never called, the metadata objects training checkpoints
// carry beside their weights (PyTorch Lightning's ModelCheckpoint callback, numpy scalars and
// dtypes, torch.Size, builtins.set). Any other global is refused by name: a pickle that names
// one could run code when Python loads it, and stipple does not load it at all.
//
// The tensors come from the object's "state_dict" entry when it has one (Lightning and CompVis
// checkpoints), else from the object itself; nested dicts join their keys with '.', and values
// that are not tensors (step counters, hyper-parameters) are skipped. Contiguous tensors view the
// file's memory map without copying; strided views are copied. Storage types are read by their
// little-endian bytes; every size, stride and offset is checked against the storage's bytes.
//
// Leaves out: the legacy (pre-1.6, non-ZIP) format, refused with advice; big-endian archives;
// tensor subclasses, quantized and sparse tensors (refused by their rebuild function's name).
#pragma once

#include <cstdint>
#include <string>

#include "io/safetensors.h"

namespace stipple::io {

// True when `path` starts like a ZIP archive (torch.save's format) rather than a safetensors
// header.
bool looks_like_torch_checkpoint(const std::string& path);

// Reads the tensors of a PyTorch checkpoint as a SafetensorsFile (from_tensors), so every loader
// that takes safetensors takes it. Throws stipple::Error naming the file and the problem.
SafetensorsFile open_torch_checkpoint(const std::string& path);
// The same over bytes in memory (for tests and fuzzing); `name` stands for the path.
SafetensorsFile torch_checkpoint_from_bytes(std::string bytes, const std::string& name);

// Opens a weights file of either format by its first bytes: a PyTorch checkpoint or safetensors.
SafetensorsFile open_weights_file(const std::string& path);

}  // namespace stipple::io
