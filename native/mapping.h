// Mergeable anonymous mappings handed to JS as external ArrayBuffers.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "instance.h"

namespace ksm {

struct Region;
struct ViewRec;

// One mmap'd range. Owned jointly by the backing stores of the ArrayBuffers that point
// into it: it is unmapped by free() of its owner region, or when the last backing store
// is released, whichever comes first, and deleted when the last backing store goes.
struct Mapping {
  uint8_t* base = nullptr;
  size_t length = 0;  // whole pages
  bool unmapped = false;
  // A page-aligned window inside a V8-owned ArrayBuffer (runtimes that refuse external
  // ArrayBuffers): V8 frees the memory, we only ever madvise it.
  bool window = false;
  // The MADV_(UN)MERGEABLE advice last given to the whole mapping through this addon:
  // 1 or 0, or -1 once part of it was advised differently (then only smaps knows).
  int mergeable = -1;
  size_t stores = 0;  // live backing stores pointing into it
  // Light views (see View in mapping.cc) still attached, by the page their first byte is
  // on: at most one per page, so the address names the view. One pointer per page of the
  // mapping (1/512 of its size), allocated with the first view; calloc leaves the pages
  // of a large table untouched until used.
  ViewRec** views = nullptr;
  size_t attached = 0;  // non-null entries of views
  // free() of the owner came while light views were still attached: the pages were given
  // back with MADV_DONTNEED (the views read zeros), and munmap waits for the last view.
  bool released = false;
  std::vector<Region*> regions;  // regions whose ArrayBuffer may still be attached
  Instance* inst = nullptr;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { std::free(views); }
};

// One external ArrayBuffer over (part of) a Mapping. Held twice: by the ArrayBuffer
// object (napi_wrap, so it can be found from JS even after detaching) and by the
// backing store (the external finalizer). Whoever lets go last deletes it.
struct Region {
  uint32_t magic = kMagic;
  Mapping* mapping = nullptr;
  size_t offset = 0;             // from mapping->base, always page aligned
  size_t abOffset = 0;           // where the region starts inside its ArrayBuffer (windows)
  size_t length = 0;             // bytes visible through the ArrayBuffer
  size_t extent = 0;             // page-rounded bytes this region owns (>= one page)
  bool owner = false;            // made by alloc(): freeing it unmaps the mapping
  bool detached = false;         // detached by us (free, release, or owner unmapped)
  bool finalizePending = false;  // detached by us: counted in Instance::finalizePending
  bool storeLive = true;
  napi_ref weak = nullptr;  // to detach the ArrayBuffer when its mapping goes
  int holds = 2;

  static constexpr uint32_t kMagic = 0x6b736d31;  // "ksm1"
  uint8_t* data() const { return mapping->base + offset; }
};

// The ArrayBuffer under a TypedArray, DataView or ArrayBuffer, with the view's offset and
// length in it. False for anything else, a SharedArrayBuffer view included (the addon
// cannot own or locate such memory).
bool ViewOf(Napi::Env env, const Napi::Value& v, Napi::ArrayBuffer* ab, size_t* offset,
            size_t* length);

// Returns the Region behind an ArrayBuffer made by this addon, or nullptr.
Region* FindRegion(Napi::Env env, napi_value ab);

// What the addon knows of an ArrayBuffer it made: a Region (alloc, window), or a light view
// (an arena buffer: an external ArrayBuffer with no tag or wrap, recognised while attached
// by the address of its bytes, which lies inside one of our live mappings).
struct Owned {
  Mapping* mapping = nullptr;  // null once a Region has lost it
  Region* region = nullptr;    // null for a light view
  ViewRec* view = nullptr;     // the light view's record (null for a Region)
  size_t offset = 0;           // from mapping->base
  size_t abOffset = 0;         // where the bytes start inside the ArrayBuffer (windows)
  size_t length = 0;
  size_t extent = 0;
  bool owner = false;
  bool freed = false;
  uint8_t* data() const { return mapping->base + offset; }
};

// False if the ArrayBuffer is not ours (or is a detached light view: it no longer has an
// address to be recognised by).
bool Lookup(Napi::Env env, napi_value ab, Owned* out);

void InitMapping(Napi::Env env, Napi::Object exports);

}  // namespace ksm
