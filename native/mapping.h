// Mergeable anonymous mappings handed to JS as external ArrayBuffers.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "instance.h"

namespace ksm {

struct Region;

// One mmap'd range. Owned jointly by the backing stores of the ArrayBuffers that point
// into it: it is unmapped by free() of its owner region, or when the last backing store
// is released, whichever comes first, and deleted when the last backing store goes.
struct Mapping {
  uint8_t* base = nullptr;
  size_t length = 0;        // whole pages
  bool unmapped = false;
  // A page-aligned window inside a V8-owned ArrayBuffer (runtimes that refuse external
  // ArrayBuffers): V8 frees the memory, we only ever madvise it.
  bool window = false;
  // The MADV_(UN)MERGEABLE advice last given to the whole mapping through this addon:
  // 1 or 0, or -1 once part of it was advised differently (then only smaps knows).
  int mergeable = -1;
  size_t stores = 0;        // live backing stores pointing into it
  std::vector<Region*> regions;  // regions whose ArrayBuffer may still be attached
  Instance* inst = nullptr;
};

// One external ArrayBuffer over (part of) a Mapping. Held twice: by the ArrayBuffer
// object (napi_wrap, so it can be found from JS even after detaching) and by the
// backing store (the external finalizer). Whoever lets go last deletes it.
struct Region {
  uint32_t magic = kMagic;
  Mapping* mapping = nullptr;
  size_t offset = 0;        // from mapping->base, always page aligned
  size_t abOffset = 0;      // where the region starts inside its ArrayBuffer (windows)
  size_t length = 0;        // bytes visible through the ArrayBuffer
  size_t extent = 0;        // page-rounded bytes this region owns (>= one page)
  bool owner = false;       // made by alloc(): freeing it unmaps the mapping
  bool detached = false;    // detached by us (free, release, or owner unmapped)
  bool storeLive = true;
  napi_ref weak = nullptr;  // to detach the ArrayBuffer when its mapping goes
  int holds = 2;

  static constexpr uint32_t kMagic = 0x6b736d31;  // "ksm1"
  uint8_t* data() const { return mapping->base + offset; }
};

// The ArrayBuffer under a TypedArray, DataView or ArrayBuffer, with the view's offset and
// length in it. False for anything else, a SharedArrayBuffer view included (the addon
// cannot own or locate such memory).
bool ViewOf(Napi::Env env, const Napi::Value& v, Napi::ArrayBuffer* ab, size_t* offset, size_t* length);

// Returns the Region behind an ArrayBuffer made by this addon, or nullptr.
Region* FindRegion(Napi::Env env, napi_value arrayBuffer);

void InitMapping(Napi::Env env, Napi::Object exports);

}  // namespace ksm
