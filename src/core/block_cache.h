// The policy of the cache of freed storage blocks (core/storage.cc), for the modes that trade time
// for peak memory (Engine's --low-memory).
#pragma once

#include <cstddef>

namespace stipple {

// On: before a block comes fresh from the system, cached blocks go (oldest first) until the
// storages in use, the new block and the cache fit under the high-water mark of storages in use
// (Storage::peak_live_bytes) less `headroom` — so the cache never raises the process's peak
// (`headroom` leaves room for memory that is not storages: kernels' scratch, reorders). Off (the
// default): only the byte budget bounds the cache.
void set_block_cache_peak_bound(bool on, size_t headroom = 0);

// Bytes of storage blocks of 1 MiB or more mapped fresh from the system since the process began:
// pages the kernel zeroes on first touch (`stipple bench generate` reports it per generation).
size_t block_cache_fresh_bytes();

}  // namespace stipple
