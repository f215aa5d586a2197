// The central directory of a ZIP archive held in memory (PKWARE APPNOTE 6.3: end of central
// directory record, Zip64 end record and locator, central file headers, local file headers), as
// far as PyTorch's checkpoints need it: every entry's name, compression method, sizes and the
// offset of its data. PyTorch writes its entries stored (method 0) and aligned; entries with other
// methods are listed, and data_offset() refuses them by name.
//
// Every offset and size is checked against the archive's length before it is used, so a
// truncated or corrupt archive fails with a stipple::Error naming `name` and the problem.
//
// Leaves out: compression, encryption, multi-disk archives, data descriptors' checks (sizes come
// from the central directory), and CRC checks.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace stipple::io {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 = stored
  uint64_t compressed_size = 0, size = 0;
  uint64_t local_header_offset = 0;
};

class ZipDirectory {
 public:
  // Parses the directory of the `size` bytes at `data` (which must outlive this object).
  static ZipDirectory parse(const uint8_t* data, uint64_t size, const std::string& name);
  // True when the bytes start like a ZIP archive (a local file header).
  static bool looks_like_zip(const uint8_t* data, uint64_t size);

  const std::map<std::string, ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& entry) const;
  // The offset of a stored entry's bytes in the archive (checked to lie inside it); throws for
  // a compressed entry or one whose local header does not fit.
  uint64_t data_offset(const ZipEntry& entry) const;

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  std::string name_;
  std::map<std::string, ZipEntry> entries_;
};

}  // namespace stipple::io
