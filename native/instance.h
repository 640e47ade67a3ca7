// Per-environment state. Kept in napi instance data, never in statics, so the addon
// loads in worker threads and every environment keeps its own counters.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <map>

namespace ksm {

struct Mapping;

struct Instance {
  // The KsmError class from lib/errors.ts, so native errors are real KsmErrors.
  Napi::FunctionReference errorClass;
  size_t pageSize = 0;
  // The runtime refuses external ArrayBuffers (V8 sandbox, Electron >= 21), or the addon
  // was built with NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED: alloc() hands out windows.
  bool windowMode = false;
  // Live counts, for leak tests and diagnostics (`native.counters()`).
  int64_t mappings = 0;     // mmap'd ranges not yet unmapped
  int64_t mappedBytes = 0;  // their total length
  int64_t regions = 0;      // ArrayBuffers over those ranges not yet finalized
  int64_t views = 0;        // light views (arena buffers) not yet finalized
  // ArrayBuffers this addon detached whose backing-store finalizers have not run yet
  // (Node runs them on a later turn of the event loop), and the most of them at once
  // since the C heap was last trimmed (see NoteFinalized in mapping.cc).
  int64_t finalizePending = 0;
  int64_t finalizePeak = 0;
  // A burst's trim has run and its last records are still to come: trim once more when
  // they are all finalized.
  bool trimAtEnd = false;
  // Our own mmap'd ranges still mapped (window mode has none), by base address: how a
  // light view, which carries no tag, is recognised from the address of its bytes.
  std::map<uintptr_t, Mapping*> live;

  static Instance* Get(Napi::Env env) { return env.GetInstanceData<Instance>(); }
};

}  // namespace ksm
