// Fuzzes the PyTorch checkpoint reader: the input is a whole torch.save file (a ZIP archive with
// a pickle), read by io::torch_checkpoint_from_bytes (the reader open_torch_checkpoint runs on a
// mapping): the ZIP directory, the restricted pickle machine, storage lookups and tensor
// rebuilding (views and strided copies). Every tensor's bytes are then touched. Bounded by the
// input: a tensor never claims more elements than its storage's bytes hold.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stipple::fuzz::run_catching_errors([&] {
    const auto file = stipple::io::torch_checkpoint_from_bytes(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.ckpt");
    for (const std::string& name : file.names()) {
      const stipple::Tensor t = file.tensor(name);
      STIPPLE_FUZZ_EXPECT(t.shape() == file.shape(name));
      const size_t nbytes = static_cast<size_t>(t.numel()) * stipple::dtype_size(t.dtype());
      STIPPLE_FUZZ_EXPECT(nbytes <= 8 * size);
      if (nbytes > 0) {
        const auto* p = static_cast<const volatile uint8_t*>(t.raw_data());
        (void)p[0];
        (void)p[nbytes - 1];
      }
    }
  });
  return 0;
}
