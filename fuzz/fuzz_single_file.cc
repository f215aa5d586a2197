// Fuzzes single-file checkpoint detection (io::looks_like_single_file, io::inspect_single_file):
// the family, the components and their configs from tensor names and shapes alone.
//
// The input is a tensor list, one tensor per line: "NAME DTYPE D0,D1,..." (no third field: a
// scalar), and optionally lines that set what the weights cannot say (SingleFileOptions):
// "#groups N", "#heads N", "#prediction TYPE", "#upcast 1". The target writes the matching safetensors file into a memfd (header, then the data
// region as a hole, so real Stable Diffusion shapes cost no memory), and opens it with
// SafetensorsFile::open through /proc/self/fd. Detection reads no tensor data. Inputs over 4096
// lines or 8 GiB of tensor data are skipped.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "io/safetensors.h"
#include "io/single_file.h"

namespace {

// The bytes per element of the dtypes the format defines (sub-byte ones rounded up), 0 if unknown.
uint64_t element_bytes(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64" || d == "C64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  return 1;
}

// A non-negative decimal of at most 12 digits, or -1.
int64_t small_number(const std::string& s) {
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(s);
}

// The safetensors header for the listed tensors, or "" when the input is out of bounds.
std::string header_for(const std::string& text, uint64_t* data_bytes,
                       stipple::io::SingleFileOptions* options) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::istringstream lines(text);
  std::string line;
  uint64_t offset = 0;
  int count = 0;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string name, dtype, dims;
    if (!(fields >> name >> dtype)) continue;
    if (name == "#groups") {
      options->norm_num_groups = small_number(dtype);
      continue;
    }
    if (name == "#heads") {
      options->text_num_heads = small_number(dtype);
      continue;
    }
    if (name == "#prediction") {
      options->prediction_type = dtype;
      continue;
    }
    if (name == "#upcast") {
      options->upcast_attention = dtype == "1";
      continue;
    }
    fields >> dims;
    if (++count > 4096) return "";
    std::vector<uint64_t> shape;
    uint64_t numel = 1;
    std::istringstream dim_list(dims);
    std::string d;
    while (std::getline(dim_list, d, ',')) {
      const int64_t n = small_number(d);
      if (n < 0) return "";
      shape.push_back(static_cast<uint64_t>(n));
      if (__builtin_mul_overflow(numel, shape.back(), &numel)) return "";
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, element_bytes(dtype), &nbytes)) return "";
    if (dtype == "F4") nbytes = (numel + 1) / 2;
    if (nbytes > (uint64_t{8} << 30) || offset + nbytes > (uint64_t{8} << 30)) return "";
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = dtype;
    e["shape"] = shape;
    e["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(e);
    offset += nbytes;
  }
  *data_bytes = offset;
  try {
    return header.dump();
  } catch (const nlohmann::json::exception&) {  // a name that is not UTF-8
    return "";
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t data_bytes = 0;
  stipple::io::SingleFileOptions options;
  const std::string header =
      header_for(std::string(reinterpret_cast<const char*>(data), size), &data_bytes, &options);
  if (header.empty()) return 0;
  const int fd = memfd_create("fuzz_single_file", MFD_CLOEXEC);
  if (fd < 0) std::abort();
  const uint64_t header_len = header.size();
  const bool written = ::write(fd, &header_len, 8) == 8 &&
                       ::write(fd, header.data(), header.size()) ==
                           static_cast<ssize_t>(header.size()) &&
                       ::ftruncate(fd, static_cast<off_t>(8 + header_len + data_bytes)) == 0;
  if (written) {
    stipple::fuzz::run_catching_errors([&] {
      const auto file =
          stipple::io::SafetensorsFile::open("/proc/self/fd/" + std::to_string(fd));
      if (!stipple::io::looks_like_single_file(file)) return;
      const stipple::io::SingleFileInfo info = stipple::io::inspect_single_file(file, options);
      STIPPLE_FUZZ_EXPECT(info.has_unet);
      stipple::io::single_file_key_table(&info.unet_config,
                                         info.has_vae ? &info.vae_config : nullptr,
                                         info.text_encoder_kind == "CLIP");
    });
  }
  ::close(fd);
  return 0;
}
