// safetensors reading (mmap + full header validation) and writing (see safetensors.h).
#include "io/safetensors.h"

#include "io/int_widen.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/error.h"
#include "io/atomic_file.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace stipple::io {
namespace {

using json = nlohmann::json;

// The reference implementation's limit (safetensors' MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Bits per element of every dtype the format defines; 0 for an unknown name.
int dtype_bits(const std::string& d) {
  static const std::map<std::string, int> kBits = {
      {"BOOL", 8},    {"U8", 8},   {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8},
      {"F8_E8M0", 8}, {"I16", 16}, {"U16", 16}, {"F16", 16},    {"BF16", 16},
      {"I32", 32},    {"U32", 32}, {"F32", 32}, {"F64", 64},    {"I64", 64},
      {"U64", 64},    {"C64", 64}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6}};
  auto it = kBits.find(d);
  return it == kBits.end() ? 0 : it->second;
}

// The stipple dtype a safetensors dtype is viewed as without conversion.
bool direct_dtype(const std::string& d, DType* out) {
  static const std::map<std::string, DType> kDirect = {{"F32", DType::kF32},
                                                       {"F16", DType::kF16},
                                                       {"BF16", DType::kBF16},
                                                       {"I64", DType::kI64},
                                                       {"F64", DType::kF64}};
  auto it = kDirect.find(d);
  if (it == kDirect.end()) return false;
  *out = it->second;
  return true;
}

const char* safetensors_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI64:
      return "I64";
    case DType::kF64:
      return "F64";
  }
  STIPPLE_ASSERT(false);
}

// Reads a non-negative JSON integer, or explains what is wrong with it.
bool read_index(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    *out = static_cast<uint64_t>(s);
    return true;
  }
  return false;
}

// The one check that needs no bytes: a file shorter than the length field.
Error too_short(const std::string& path, uint64_t size) {
  return Error(str_cat(path, ": not a safetensors file: it is ", size,
                       " bytes long, shorter than the 8-byte header length that starts every "
                       "safetensors file (truncated or empty download?)"));
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t length = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, length);
  }
};

bool safetensors_dtype_supported(const std::string& dtype) {
  DType unused;
  return direct_dtype(dtype, &unused) || widens_to_i64(dtype);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const auto&... parts) -> Error { return Error(str_cat(path, ": ", parts...)); };

  // Open and map the whole file, then parse the mapping.
  // O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then refuses it).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    throw fail("cannot open the safetensors file: ", std::strerror(err));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw too_short(path, file_size);
  }
  auto mapping = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) throw fail("cannot map the file: ", std::strerror(map_err));
  mapping->addr = addr;
  mapping->length = file_size;
  SafetensorsFile file =
      parse(std::move(mapping), static_cast<const uint8_t*>(addr), file_size, path);
  file.file_mapped_ = true;
  return file;
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, const std::string& name) {
  auto owned = std::make_shared<std::string>(std::move(bytes));
  const auto* data = reinterpret_cast<const uint8_t*>(owned->data());
  const uint64_t size = owned->size();
  return parse(std::move(owned), data, size, name);
}

SafetensorsFile SafetensorsFile::parse(std::shared_ptr<void> keepalive, const uint8_t* bytes,
                                       uint64_t file_size, const std::string& path) {
  auto fail = [&](const auto&... parts) -> Error { return Error(str_cat(path, ": ", parts...)); };
  // 1. The length field.
  if (file_size < 8) throw too_short(path, file_size);

  // 2. Header length.
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes) {
    throw fail("invalid safetensors header: the header length ", header_len, " is larger than the ",
               kMaxHeaderBytes, "-byte limit; the file is corrupt or not a safetensors file");
  }
  if (header_len > file_size - 8) {
    throw fail("invalid safetensors header: the header length ", header_len,
               " runs past the end of the file (", file_size,
               " bytes); the file is truncated or not a safetensors file");
  }

  // 3. Parse the JSON, noting duplicate top-level keys (nlohmann keeps only the last one).
  std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_len);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\0')) text.remove_suffix(1);
  // Two linear passes: nlohmann's callback parser rescans the enclosing object at the end of
  // every nested one (quadratic: a 200,000-entry header took minutes), so duplicates are found
  // by a SAX pass that only records top-level keys.
  struct TopLevelKeys : json::json_sax_t {
    int depth = 0;
    std::set<std::string> seen;
    std::vector<std::string> duplicates;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return ++depth, true; }
    bool key(string_t& k) override {
      if (depth == 1 && !seen.insert(k).second) duplicates.push_back(k);
      return true;
    }
    bool end_object() override { return --depth, true; }
    bool start_array(std::size_t) override { return ++depth, true; }
    bool end_array() override { return --depth, true; }
    bool parse_error(std::size_t, const std::string&, const json::exception&) override {
      return false;  // json::parse below reports it
    }
  } keys;
  json header;
  try {
    header = json::parse(text.begin(), text.end());
    json::sax_parse(text.begin(), text.end(), &keys);
  } catch (const json::exception& e) {
    throw fail("invalid safetensors header: the header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) {
    throw fail("invalid safetensors header: the header is a JSON ", header.type_name(),
               ", not an object");
  }
  if (!keys.duplicates.empty()) {
    throw fail("invalid safetensors header: the name '", keys.duplicates.front(),
               "' appears more than once");
  }

  // 4. Check every entry.
  SafetensorsFile file;
  file.path_ = path;
  file.data_ = bytes + 8 + header_len;
  file.data_size_ = file_size - 8 - header_len;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) {
        throw fail("invalid safetensors header: __metadata__ is a JSON ", v.type_name(),
                   ", not an object of strings");
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        file.metadata_[m.key()] =
            m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      }
      continue;
    }
    auto bad = [&](const auto&... parts) {
      return fail("invalid safetensors header: tensor '", name, "': ", parts...);
    };
    if (!v.is_object()) throw bad("the entry is a JSON ", v.type_name(), ", not an object");
    SafetensorsEntry e;
    e.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end()) throw bad("missing \"dtype\"");
    if (!dt->is_string()) throw bad("\"dtype\" is not a string");
    e.dtype = dt->get<std::string>();
    const int bits = dtype_bits(e.dtype);
    if (bits == 0) throw bad("unknown dtype \"", e.dtype, "\"");

    auto sh = v.find("shape");
    if (sh == v.end()) throw bad("missing \"shape\"");
    if (!sh->is_array()) throw bad("\"shape\" is not an array");
    uint64_t numel = 1;
    // The product of the non-zero sizes: the largest stride, which must fit in an int64 even when
    // a zero size makes the tensor empty ([0, 2^62, 2^62] would overflow the strides).
    uint64_t extent = 1;
    for (const json& d : *sh) {
      uint64_t n;
      if (!read_index(d, &n) || n > static_cast<uint64_t>(INT64_MAX)) {
        throw bad("shape ", sh->dump(), " has an entry that is not a non-negative integer");
      }
      e.shape.push_back(static_cast<int64_t>(n));
      if (__builtin_mul_overflow(numel, n, &numel)) throw bad("shape ", sh->dump(), " overflows");
      if (n != 0 && (__builtin_mul_overflow(extent, n, &extent) ||
                     extent > static_cast<uint64_t>(INT64_MAX))) {
        throw bad("shape ", sh->dump(), " overflows (the product of its non-zero sizes is over ",
                  "2^63)");
      }
    }
    uint64_t nbits;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(bits), &nbits)) {
      throw bad("shape ", sh->dump(), " overflows");
    }
    if (nbits % 8 != 0) throw bad(numel, " elements of ", e.dtype, " do not fill whole bytes");

    auto off = v.find("data_offsets");
    if (off == v.end()) throw bad("missing \"data_offsets\"");
    if (!off->is_array() || off->size() != 2 || !read_index((*off)[0], &e.begin) ||
        !read_index((*off)[1], &e.end)) {
      throw bad("\"data_offsets\" ", off->dump(), " is not two non-negative integers");
    }
    if (e.begin > e.end) throw bad("data_offsets ", off->dump(), " are reversed");
    if (e.end > file.data_size_) {
      throw bad("data_offsets ", off->dump(), " run past the end of the data region (",
                file.data_size_, " bytes); the file is truncated or corrupt");
    }
    if (e.end - e.begin != nbits / 8) {
      throw bad("shape ", shape_str(e.shape), " of ", e.dtype, " needs ", nbits / 8,
                " bytes but data_offsets ", off->dump(), " hold ", e.end - e.begin);
    }
    file.entries_.emplace(name, std::move(e));
  }

  // 5. The tensors must tile the data region: no overlap, no gap, no trailing bytes.
  std::vector<const SafetensorsEntry*> order;
  for (const auto& [name, e] : file.entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : order) {
    if (e->begin < cursor) {
      throw fail("invalid safetensors header: tensors '", prev->name, "' [", prev->begin, ", ",
                 prev->end, ") and '", e->name, "' [", e->begin, ", ", e->end, ") overlap");
    }
    if (e->begin > cursor) {
      throw fail("invalid safetensors header: bytes [", cursor, ", ", e->begin,
                 ") of the data region belong to no tensor (before '", e->name,
                 "'); safetensors requires the tensors to cover the data exactly");
    }
    cursor = e->end;
    prev = e;
  }
  if (cursor != file.data_size_) {
    throw fail("invalid safetensors header: the tensors end at byte ", cursor,
               " of the data region but the file holds ", file.data_size_,
               " data bytes; the trailing bytes belong to no tensor (corrupt file?)");
  }
  file.keepalive_ = std::move(keepalive);
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  STIPPLE_CHECK(it != entries_.end(), path_, ": no tensor named '", name, "' (the file holds ",
                entries_.size(), " tensors)");
  return it->second;
}

int64_t SafetensorsFile::dim(const std::string& name, size_t d) const {
  const Shape& s = shape(name);
  STIPPLE_CHECK(d < s.size(), path_, ": tensor '", name, "' has shape ", shape_str(s),
                ", expected at least ", d + 1, " dimensions");
  return s[d];
}

DType SafetensorsFile::dtype(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  DType t;
  if (direct_dtype(e.dtype, &t)) return t;
  STIPPLE_CHECK(widens_to_i64(e.dtype), path_, ": unsupported dtype ", e.dtype, " for tensor '",
                name, "' (stipple reads F32, F16, BF16, F64, I64 and integer types up to 32 bits)");
  return DType::kI64;
}

SafetensorsFile SafetensorsFile::from_tensors(std::map<std::string, Tensor> tensors,
                                              const std::string& name) {
  SafetensorsFile f;
  f.path_ = name;
  for (auto& [key, t] : tensors) {
    STIPPLE_CHECK(t.defined(), name, ": tensor ", key, " is undefined");
    SafetensorsEntry e;
    e.name = key;
    e.dtype = safetensors_name(t.dtype());  // throws for dtypes a file cannot hold
    e.shape = t.shape();
    f.entries_[key] = e;
  }
  f.held_ = std::move(tensors);
  return f;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  if (!held_.empty()) {
    auto it = held_.find(name);
    STIPPLE_CHECK(it != held_.end(), path_, ": no tensor named '", name, "'");
    return it->second;
  }
  const SafetensorsEntry& e = entry(name);
  const DType t = dtype(name);  // throws for unsupported dtypes
  const uint8_t* src = data_ + e.begin;
  const size_t nbytes = e.end - e.begin;
  DType direct;
  if (direct_dtype(e.dtype, &direct)) {
    if (reinterpret_cast<uintptr_t>(src) % dtype_size(t) == 0) {
      auto storage = Storage::wrap(const_cast<uint8_t*>(src), nbytes, keepalive_, Device::kCPU,
                                   file_mapped_);
      return Tensor::from_storage(std::move(storage), 0, e.shape, t);
    }
    auto storage = Storage::allocate(nbytes);
    if (nbytes > 0) std::memcpy(storage->data(), src, nbytes);
    return Tensor::from_storage(std::move(storage), 0, e.shape, t);
  }
  // Integer types widened to I64.
  const int64_t n = shape_numel(e.shape);
  Tensor out = Tensor::empty(e.shape, DType::kI64);
  int64_t* dst = n > 0 ? out.data<int64_t>() : nullptr;
  const bool widened = widen_to_i64(src, e.dtype, dst, n);
  STIPPLE_ASSERT(widened);  // the header check admitted only these dtypes
  return out;
}

std::map<std::string, Tensor> SafetensorsFile::tensors() const {
  std::map<std::string, Tensor> out;
  for (const auto& [name, e] : entries_) out.emplace(name, tensor(name));
  return out;
}

std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  return SafetensorsFile::open(path).tensors();
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // 1. Check the inputs and get plain contiguous data for each tensor.
  struct Item {
    const std::string* name;
    Tensor data;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    STIPPLE_CHECK(!name.empty(), "save_safetensors ", path, ": a tensor has an empty name");
    STIPPLE_CHECK(name != "__metadata__", "save_safetensors ", path,
                  ": '__metadata__' is reserved and cannot name a tensor");
    STIPPLE_CHECK(t.defined(), "save_safetensors ", path, ": tensor '", name, "' is undefined");
    STIPPLE_CHECK(t.device() == Device::kCPU, "save_safetensors ", path, ": tensor '", name,
                  "' is on ", device_name(t.device()), "; copy it to the CPU first");
    items.push_back({&name, t.is_contiguous() ? t : t.contiguous()});
  }
  // Largest elements first, then by name: keeps every tensor aligned to its element size.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return dtype_size(a.data.dtype()) > dtype_size(b.data.dtype());
  });

  // 2. The header.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Item& it : items) {
    const uint64_t nbytes = static_cast<uint64_t>(it.data.numel()) * dtype_size(it.data.dtype());
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = safetensors_name(it.data.dtype());
    e["shape"] = it.data.shape();
    e["data_offsets"] = {offset, offset + nbytes};
    header[*it.name] = std::move(e);
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat("save_safetensors ", path, ": a tensor name or metadata string is not ",
                        "valid UTF-8 (", e.what(), ")"));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  // 3. Write: length, header, data.
  write_file_atomic(path, [&](AtomicFile& f) {
    f.write(&header_len, 8);
    f.write(text);
    for (const Item& it : items) {
      const size_t nbytes = static_cast<size_t>(it.data.numel()) * dtype_size(it.data.dtype());
      if (nbytes > 0) f.write(it.data.raw_data(), nbytes);
    }
  });
}

}  // namespace stipple::io
