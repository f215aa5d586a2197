// ZIP central directory reading (see zip_reader.h).
#include "io/zip_reader.h"

#include <cstring>

#include "core/error.h"

namespace stipple::io {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndRecord = 0x06054b50;
constexpr uint32_t kZip64EndRecord = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint64_t kMaxEntries = 1u << 22;  // far above any checkpoint's tensor count

uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t u64(const uint8_t* p) { return u32(p) | (static_cast<uint64_t>(u32(p + 4)) << 32); }

}  // namespace

bool ZipDirectory::looks_like_zip(const uint8_t* data, uint64_t size) {
  return size >= 4 && u32(data) == kLocalHeader;
}

ZipDirectory ZipDirectory::parse(const uint8_t* data, uint64_t size, const std::string& name) {
  auto fail = [&](const auto&... parts) { return Error(str_cat(name, ": ", parts...)); };
  ZipDirectory z;
  z.data_ = data;
  z.size_ = size;
  z.name_ = name;
  // The end of central directory record: 22 bytes plus a comment of up to 65535 bytes.
  if (size < 22) throw fail("too short for a ZIP archive (", size, " bytes)");
  int64_t end = -1;
  const uint64_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (uint64_t p = size - 22;; --p) {
    if (u32(data + p) == kEndRecord && p + 22 + u16(data + p + 20) == size) {
      end = static_cast<int64_t>(p);
      break;
    }
    if (p == lowest) break;
  }
  if (end < 0) throw fail("no ZIP end-of-central-directory record (truncated or not a ZIP file)");
  const uint8_t* e = data + end;
  uint64_t count = u16(e + 10);
  uint64_t dir_size = u32(e + 12);
  uint64_t dir_offset = u32(e + 16);
  if (count == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {
    // Zip64: the locator sits right before the end record and points at the Zip64 end record.
    if (end < 20 || u32(e - 20) != kZip64Locator)
      throw fail("a Zip64 archive without its Zip64 end-of-central-directory locator");
    const uint64_t rec = u64(e - 20 + 8);
    if (rec > size || size - rec < 56 || u32(data + rec) != kZip64EndRecord)
      throw fail("the Zip64 end-of-central-directory record is outside the file or corrupt");
    count = u64(data + rec + 32);
    dir_size = u64(data + rec + 40);
    dir_offset = u64(data + rec + 48);
  }
  if (dir_offset > size || dir_size > size - dir_offset)
    throw fail("the ZIP central directory (", dir_size, " bytes at ", dir_offset,
               ") runs past the end of the file (", size, " bytes): truncated?");
  if (count > kMaxEntries) throw fail("the ZIP directory claims ", count, " entries");
  uint64_t p = dir_offset;
  const uint64_t dir_end = dir_offset + dir_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (dir_end - p < 46 || u32(data + p) != kCentralHeader)
      throw fail("ZIP central directory entry ", i, " is corrupt");
    const uint8_t* h = data + p;
    ZipEntry entry;
    entry.method = u16(h + 10);
    entry.compressed_size = u32(h + 20);
    entry.size = u32(h + 24);
    const uint64_t name_len = u16(h + 28), extra_len = u16(h + 30), comment_len = u16(h + 32);
    entry.local_header_offset = u32(h + 42);
    if (dir_end - p - 46 < name_len + extra_len + comment_len)
      throw fail("ZIP central directory entry ", i, " runs past the directory");
    entry.name.assign(reinterpret_cast<const char*>(h + 46), name_len);
    // Zip64 extended information: the 64-bit values of the fields that hold 0xFFFFFFFF, in order.
    const uint8_t* x = h + 46 + name_len;
    for (uint64_t q = 0; q + 4 <= extra_len;) {
      const uint16_t id = u16(x + q), len = u16(x + q + 2);
      if (q + 4 + len > extra_len) throw fail("ZIP entry ", entry.name, ": corrupt extra field");
      if (id == 0x0001) {
        const uint8_t* v = x + q + 4;
        uint64_t left = len;
        auto take = [&](uint64_t* field) {
          if (*field != 0xFFFFFFFF) return;
          if (left < 8) throw fail("ZIP entry ", entry.name, ": short Zip64 extra field");
          *field = u64(v);
          v += 8;
          left -= 8;
        };
        take(&entry.size);
        take(&entry.compressed_size);
        take(&entry.local_header_offset);
      }
      q += 4 + len;
    }
    p += 46 + name_len + extra_len + comment_len;
    if (!z.entries_.emplace(entry.name, entry).second)
      throw fail("the ZIP archive holds ", entry.name, " twice");
  }
  return z;
}

const ZipEntry* ZipDirectory::find(const std::string& entry) const {
  auto it = entries_.find(entry);
  return it == entries_.end() ? nullptr : &it->second;
}

uint64_t ZipDirectory::data_offset(const ZipEntry& entry) const {
  auto fail = [&](const auto&... parts) { return Error(str_cat(name_, ": ", parts...)); };
  if (entry.method != 0)
    throw fail("ZIP entry ", entry.name, " is compressed (method ", entry.method,
               "); PyTorch stores its entries uncompressed, so this archive was repacked. "
               "Unpack and re-save it, or convert it to safetensors with PyTorch");
  const uint64_t h = entry.local_header_offset;
  if (h > size_ || size_ - h < 30 || u32(data_ + h) != kLocalHeader)
    throw fail("ZIP entry ", entry.name, ": its local header is outside the file or corrupt");
  const uint64_t start = h + 30 + u16(data_ + h + 26) + u16(data_ + h + 28);
  if (start > size_ || entry.compressed_size > size_ - start)
    throw fail("ZIP entry ", entry.name, " (", entry.compressed_size,
               " bytes) runs past the end of the file: truncated?");
  return start;
}

}  // namespace stipple::io
