// Fuzzes the safetensors reader: the input is a whole file, parsed by SafetensorsFile::from_bytes
// (the parser open() uses on a mapping), then every tensor is read (views, copies of unaligned
// data, integer widening) and every supported one is touched. Bounded by the input: the tensors
// must tile the data region, so no tensor is larger than the input.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stipple::fuzz::run_catching_errors([&] {
    const auto file = stipple::io::SafetensorsFile::from_bytes(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    for (const auto& [key, value] : file.metadata()) (void)value.size();
    for (const std::string& name : file.names()) {
      const auto& e = file.entry(name);
      STIPPLE_FUZZ_EXPECT(e.begin <= e.end && e.end - e.begin <= size);
      if (!stipple::io::safetensors_dtype_supported(e.dtype)) continue;
      const stipple::Tensor t = file.tensor(name);
      STIPPLE_FUZZ_EXPECT(t.shape() == e.shape);
      // Touch the first and last byte of the tensor's data.
      const size_t nbytes = static_cast<size_t>(t.numel()) * stipple::dtype_size(t.dtype());
      if (nbytes > 0) {
        const auto* p = static_cast<const volatile uint8_t*>(t.raw_data());
        (void)p[0];
        (void)p[nbytes - 1];
      }
    }
  });
  return 0;
}
