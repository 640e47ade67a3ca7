// mmap/munmap/madvise/prctl for JS. Arguments are validated in lib/ and checked again
// here: nothing a caller passes may make this code touch memory it does not own.
#include "mapping.h"

#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <string>

#include "errors.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif

namespace ksm {

namespace {

// Tags ArrayBuffers made here, so that a pointer wrapped onto an ArrayBuffer by some
// other addon is never mistaken for a Region.
const napi_type_tag kRegionTag = {0x9f1c0e6a2b7d4c11ULL, 0x8a3e5d2f60b94c07ULL};

enum Advice : int32_t {
  kMergeable = 1,
  kUnmergeable = 2,
  kDontNeed = 3,
};

size_t RoundUp(size_t n, size_t page) { return (n + page - 1) / page * page; }

// Largest size we accept: lib/ clamps further to buffer.constants.MAX_LENGTH.
constexpr double kMaxSize = 9007199254740991.0;  // 2^53 - 1

size_t ToSize(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) {
    ThrowTypeError(env, std::string("The \"") + name + "\" argument must be of type number");
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > kMaxSize || std::floor(d) != d) {
    ThrowRangeError(env, std::string("The value of \"") + name +
                             "\" is out of range. It must be an integer >= 0 and <= 2^53 - 1");
  }
  return static_cast<size_t>(d);
}

// Gives the memory up: munmap for our mappings. A window's memory belongs to V8 and
// returns to its allocator, so it is only made unmergeable again (that memory may next
// hold data that must never merge); a failure there means V8 already freed it.
void Unmap(Mapping* m) {
  if (m->unmapped) return;
  if (m->window) {
    madvise(m->base, m->length, MADV_UNMERGEABLE);
  } else {
    munmap(m->base, m->length);
  }
  m->unmapped = true;
  if (m->inst != nullptr) {
    m->inst->mappings--;
    m->inst->mappedBytes -= static_cast<int64_t>(m->length);
    if (!m->window) m->inst->live.erase(reinterpret_cast<uintptr_t>(m->base));
  }
}

// Gives the C heap's free pages back to the system, where the C library can.
bool TrimCHeap() {
#if defined(__GLIBC__)
  malloc_trim(0);
  return true;
#else
  return false;
#endif
}

// A loop that frees buffers without yielding leaves each one's records on the C heap
// (ours and Node's, ~600 bytes: the finalizer runs on a later turn of the event loop),
// and glibc keeps the pages of those records resident after they are freed unless they
// sit at the very top of the heap: 200,000 freed buffers left ~120 MiB of free heap
// behind for good. So once most of a burst of at least kTrimAfter such records has been
// finalized, the heap is trimmed, as trimHeap() would. Measured on a busy machine: after
// 200,000 records (64 KiB alloc/free pairs, a loop of 17-35 s) the trim takes 60-120 ms,
// against 0.5-1 s for Node to run the finalizers; RSS ends 14 MiB above where it started
// instead of 120 MiB. The burst's last 1/64 of records, freed after that trim, left
// another ~3.5 MiB of free heap resident (the burst test's RSS growth varied 11-16 MiB
// with them), so when the last of them is finalized the heap is trimmed once more; that
// heap is small by then. A service that yields between requests never reaches the
// threshold: its records are finalized a turn later, a few at a time.
constexpr int64_t kTrimAfter = 16384;

void NoteDetached(Instance* inst) {
  if (++inst->finalizePending > inst->finalizePeak) inst->finalizePeak = inst->finalizePending;
}

void NoteFinalized(Instance* inst) {
  if (inst == nullptr) return;  // the environment is going away
  inst->finalizePending--;
  if (inst->finalizePeak >= kTrimAfter && inst->finalizePending <= inst->finalizePeak / 64) {
    TrimCHeap();
    inst->finalizePeak = inst->finalizePending;
    inst->trimAtEnd = inst->finalizePending > 0;
  } else if (inst->finalizePending == 0) {
    if (inst->trimAtEnd) TrimCHeap();
    inst->trimAtEnd = false;
    inst->finalizePeak = 0;
  }
}

void DropHold(napi_env env, Region* r) {
  if (--r->holds > 0) return;
  if (r->weak != nullptr) napi_delete_reference(env, r->weak);
  r->magic = 0;
  delete r;
}

void Forget(Mapping* m, Region* r) {
  auto it = std::find(m->regions.begin(), m->regions.end(), r);
  if (it != m->regions.end()) m->regions.erase(it);
}

// Drops one store count; the last one unmaps (if free() did not) and deletes.
void ReleaseStore(napi_env env, Mapping* m) {
  if (--m->stores > 0) return;
  if (!m->unmapped) {
    int64_t len = m->window ? 0 : static_cast<int64_t>(m->length);
    Unmap(m);
    int64_t ignored;
    // A released mapping was already taken off V8's external memory by free().
    if (len != 0 && !m->released) napi_adjust_external_memory(env, -len, &ignored);
  }
  delete m;
}

bool IsFreed(napi_env env, napi_value ab, const Region* r) {
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  return detached || r->detached || r->mapping == nullptr || r->mapping->unmapped;
}

// The backing store of a region's ArrayBuffer was released (the ArrayBuffer was
// collected, detached, or the environment is going away). Owns: one hold on the
// Region and one store count on its Mapping.
void StoreFinalize(napi_env env, void* /*data*/, void* hint) {
  Region* r = static_cast<Region*>(hint);
  Mapping* m = r->mapping;
  r->storeLive = false;
  if (r->finalizePending) NoteFinalized(Instance::Get(Napi::Env(env)));
  Forget(m, r);
  r->mapping = nullptr;  // the Region may outlive the Mapping (a detached ArrayBuffer)
  ReleaseStore(env, m);
  DropHold(env, r);
}

// The ArrayBuffer object itself was collected: the wrap's hold goes.
void WrapFinalize(napi_env env, void* data, void* /*hint*/) {
  Region* r = static_cast<Region*>(data);
  Instance* inst = Instance::Get(Napi::Env(env));
  if (inst != nullptr) inst->regions--;
  if (r->mapping != nullptr && r->mapping->window) {
    // A window has no backing-store finalizer: its store count goes with the object.
    Mapping* m = r->mapping;
    r->mapping = nullptr;
    ReleaseStore(env, m);
    r->holds--;
  }
  DropHold(env, r);
}

}  // namespace

// A light view: what its backing store's finalizer needs. Attached until we detach it
// (DetachView) or V8 collects it.
struct ViewRec {
  Mapping* mapping;
  size_t page;    // index of its first page in the mapping
  size_t length;  // its byte length
  bool attached = true;
  bool finalizePending = false;  // detached by us: counted in Instance::finalizePending
};

namespace {

// A light view's backing store was released (detached, or collected while attached).
// Owns one store count on the Mapping.
void ViewFinalize(napi_env env, void* /*data*/, void* hint) {
  ViewRec* v = static_cast<ViewRec*>(hint);
  Mapping* m = v->mapping;
  if (v->attached && m->views[v->page] == v) {
    m->views[v->page] = nullptr;
    m->attached--;
  }
  Instance* inst = Instance::Get(Napi::Env(env));
  if (inst != nullptr) inst->views--;
  if (v->finalizePending) NoteFinalized(inst);
  delete v;
  ReleaseStore(env, m);
}

// Tags and wraps a new ArrayBuffer as Region r, so FindRegion can find it (also once
// detached) and free() can detach it.
void Register(Napi::Env env, napi_value ab, Region* r) {
  NAPI_THROW_IF_FAILED_VOID(env, napi_type_tag_object(env, ab, &kRegionTag));
  NAPI_THROW_IF_FAILED_VOID(env, napi_wrap(env, ab, r, WrapFinalize, nullptr, nullptr));
  Instance::Get(env)->regions++;
  NAPI_THROW_IF_FAILED_VOID(env, napi_create_reference(env, ab, 0, &r->weak));
}

// Makes an external ArrayBuffer over [offset, offset+length) of m, owned as described
// on Region. On failure nothing is left registered.
Napi::ArrayBuffer MakeRegion(Napi::Env env, Mapping* m, size_t offset, size_t length, size_t extent,
                             bool owner) {
  Region* r = new Region();
  r->mapping = m;
  r->offset = offset;
  r->length = length;
  r->extent = extent;
  r->owner = owner;

  napi_value ab;
#ifdef NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED
  // Built for a runtime without external ArrayBuffers: only window mode exists.
  (void)StoreFinalize;
  napi_status status = napi_no_external_buffers_allowed;
#else
  napi_status status =
      napi_create_external_arraybuffer(env, m->base + offset, length, StoreFinalize, r, &ab);
#endif
  if (status != napi_ok) {
    delete r;
    if (status == napi_no_external_buffers_allowed) {
      throw CodeError(env, "ERR_KSM_UNSUPPORTED",
                      "This runtime does not allow external ArrayBuffers (V8 sandbox)");
    }
    throw Napi::Error::New(env, "napi_create_external_arraybuffer failed");
  }
  // From here on the backing store owns one hold and one store count.
  m->stores++;
  m->regions.push_back(r);
  Register(env, ab, r);
  return Napi::ArrayBuffer(env, ab);
}

// Window mode: a V8-owned ArrayBuffer one page larger than needed, whose page-aligned
// window of `extent` bytes is madvised. V8 owns the memory; the Region (held by the wrap
// only: there is no backing-store finalizer to hold it) owns the mapping record.
Napi::Value AllocWindow(Napi::Env env, Instance* inst, size_t size, size_t extent, bool mergeable) {
  size_t page = inst->pageSize;
  void* data = nullptr;
  napi_value ab;
  // V8 treats a failed ArrayBuffer allocation as a fatal OOM (it aborts the process),
  // so refuse what it could not hold: beyond 4 GiB (Node's largest Buffer on 64-bit
  // before 22), or more than the kernel would commit (asked with a mapping that is
  // never touched and given back at once).
  if (extent > (size_t{1} << 32) - page) {
    ThrowRangeError(env, "The value of \"size\" is out of range: at most 4 GiB in window mode");
  }
  void* probe =
      mmap(nullptr, extent + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) throw ErrnoError(env, errno, "mmap");
  munmap(probe, extent + page);
  if (napi_create_arraybuffer(env, extent + page, &data, &ab) != napi_ok || data == nullptr) {
    throw ErrnoError(env, ENOMEM, "napi_create_arraybuffer");
  }
  uintptr_t start = reinterpret_cast<uintptr_t>(data);
  uintptr_t aligned = (start + page - 1) / page * page;
  // No MADV_NOHUGEPAGE here: this is the allocator's memory, and that flag could never
  // be taken back off (it would split the heap's VMAs for good). Unmerging on free
  // restores the flags, so the allocator's VMAs join up again.
  if (mergeable && madvise(reinterpret_cast<void*>(aligned), extent, MADV_MERGEABLE) != 0) {
    throw ErrnoError(env, errno, "madvise");
  }
  Mapping* m = new Mapping();
  m->base = reinterpret_cast<uint8_t*>(aligned);
  m->length = extent;
  m->window = true;
  m->mergeable = mergeable ? 1 : 0;
  m->inst = inst;
  m->stores = 1;
  inst->mappings++;
  inst->mappedBytes += static_cast<int64_t>(extent);
  Region* r = new Region();
  r->mapping = m;
  r->length = size;
  r->extent = extent;
  r->abOffset = aligned - start;
  r->owner = true;
  r->holds = 1;
  m->regions.push_back(r);
  Register(env, ab, r);
  return Napi::Value(env, ab);
}

Napi::ArrayBuffer ArrayBufferArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsArrayBuffer()) {
    ThrowTypeError(env, std::string("The \"") + name + "\" argument must be an ArrayBuffer");
  }
  return info[i].As<Napi::ArrayBuffer>();
}

// An ArrayBuffer that must be ours and still attached.
Owned LiveOwned(Napi::Env env, napi_value ab) {
  Owned o;
  if (!Lookup(env, ab, &o)) {
    throw CodeError(env, "ERR_KSM_NOT_OWNED", "This buffer was not allocated by node-ksm");
  }
  if (o.freed) throw CodeError(env, "ERR_KSM_FREED", "This buffer has already been freed");
  return o;
}

// Detaches the ArrayBuffer of r, if it is still reachable and attached.
void DetachRegion(napi_env env, Region* r) {
  r->detached = true;
  if (r->weak == nullptr) return;
  napi_value ab = nullptr;
  if (napi_get_reference_value(env, r->weak, &ab) != napi_ok || ab == nullptr) return;
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (detached) return;
  // Counted first, in case a runtime runs the finalizer during the detach. A window has
  // no backing-store finalizer (V8 owns its memory).
  Instance* inst = Instance::Get(Napi::Env(env));
  bool counted =
      r->storeLive && r->mapping != nullptr && !r->mapping->window && !r->finalizePending;
  if (counted) {
    r->finalizePending = true;
    NoteDetached(inst);
  }
  if (napi_detach_arraybuffer(env, ab) != napi_ok && counted) {
    r->finalizePending = false;
    inst->finalizePending--;
  }
}

// alloc(size, mergeable): ArrayBuffer of `size` bytes at the start of a fresh private
// anonymous mapping of whole pages. The mapping belongs to the returned ArrayBuffer.
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Instance* inst = Instance::Get(env);
  size_t size = ToSize(env, info[0], "size");
  bool mergeable = info.Length() > 1 && info[1].ToBoolean().Value();
  size_t page = inst->pageSize;
  if (size > SIZE_MAX - page) ThrowRangeError(env, "The value of \"size\" is out of range");
  size_t length = std::max(RoundUp(size, page), page);
  if (inst->windowMode) return AllocWindow(env, inst, size, length, mergeable);

  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw ErrnoError(env, errno, "mmap");
#ifdef MADV_NOHUGEPAGE
  // A THP would have to be split before KSM can merge its pages; keep base pages.
  madvise(base, length, MADV_NOHUGEPAGE);
#endif
  if (mergeable && madvise(base, length, MADV_MERGEABLE) != 0) {
    int err = errno;
    munmap(base, length);
    throw ErrnoError(env, err, "madvise");
  }

  Mapping* m = new Mapping();
  m->base = static_cast<uint8_t*>(base);
  m->length = length;
  m->mergeable = mergeable ? 1 : 0;
  m->inst = inst;
  inst->mappings++;
  inst->mappedBytes += static_cast<int64_t>(length);
  inst->live[reinterpret_cast<uintptr_t>(base)] = m;
  Napi::ArrayBuffer ab;
  try {
    // The caller's size is the region's length, the whole mapping (whole pages) its extent.
    ab = MakeRegion(env, m, 0, size, length, true);  // NOLINT(readability-suspicious-call-argument)
  } catch (...) {
    if (m->stores == 0) {
      Unmap(m);
      delete m;
    }
    throw;
  }
  int64_t ignored;
  napi_adjust_external_memory(env, static_cast<int64_t>(length), &ignored);
  return ab;
}

// view(arrayBuffer, offset, length): a Buffer over a page-aligned part of the same
// mapping (the arena's buffers). A light view: an external buffer whose backing store
// holds the mapping (it is never unmapped under an attached view), with no tag, wrap or
// reference on the object. Those cost a weak handle and a second finalizer each, more
// than half of an arena allocation (measured: 9.0 us per view+detach, 4.0 us without).
// It is recognised by its address (Lookup), and detached by detachView().
Napi::Value View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "arrayBuffer");
  size_t offset = ToSize(env, info[1], "offset");
  size_t length = ToSize(env, info[2], "length");
  Owned o = LiveOwned(env, ab);
  Mapping* m = o.mapping;
  if (m->window) {
    throw CodeError(env, "ERR_KSM_UNSUPPORTED",
                    "Views need external ArrayBuffers, which this runtime does not allow");
  }
  Instance* inst = Instance::Get(env);
  size_t page = inst->pageSize;
  if (offset % page != 0) ThrowRangeError(env, "The value of \"offset\" must be page aligned");
  if (offset >= o.extent || length > o.extent - offset) {
    ThrowRangeError(env, "The range is outside the buffer's mapping");
  }
  size_t index = (o.offset + offset) / page;
  if (m->views == nullptr) {
    // One pointer per page (sizeof a pointer is meant).
    m->views = static_cast<ViewRec**>(
        calloc(m->length / page, sizeof(ViewRec*)));  // NOLINT(bugprone-sizeof-expression)
    if (m->views == nullptr) throw ErrnoError(env, ENOMEM, "view");
  }
  // One attached view per page, so that the address names it (arena runs never overlap).
  if (m->views[index] != nullptr) {
    throw ErrnoError(env, EBUSY, "view");
  }
  ViewRec* v = new ViewRec{m, index, length};
  napi_value buf;
#ifdef NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED
  (void)ViewFinalize;
  napi_status status = napi_no_external_buffers_allowed;
#else
  napi_status status =
      napi_create_external_buffer(env, length, o.data() + offset, ViewFinalize, v, &buf);
#endif
  if (status != napi_ok) {
    delete v;
    throw Napi::Error::New(env, "napi_create_external_buffer failed");
  }
  // From here on the backing store owns v and one store count.
  m->stores++;
  m->views[index] = v;
  m->attached++;
  inst->views++;
  return Napi::Value(env, buf);
}

// Detaches the light view `o` found by Lookup: its address is free for a new view now,
// and its finalizer (which may run later) knows it was detached.
Napi::Value DetachLight(Napi::Env env, napi_value ab, const Owned& o) {
  o.view->attached = false;
  o.mapping->views[o.view->page] = nullptr;
  o.mapping->attached--;
  Instance* inst = Instance::Get(env);
  // Counted first, in case a runtime runs the finalizer during the detach.
  o.view->finalizePending = true;
  NoteDetached(inst);
  napi_status status = napi_detach_arraybuffer(env, ab);
  if (status != napi_ok) {
    o.view->finalizePending = false;
    inst->finalizePending--;
  }
  NAPI_THROW_IF_FAILED(env, status, Napi::Value());
  return Napi::Boolean::New(env, true);
}

// detachView(arrayBuffer): detaches a light view. True if it did, false if the
// ArrayBuffer is already detached (the caller knows it was one of ours); ERR_KSM_NOT_OWNED
// for anything else, so nobody else's ArrayBuffer is ever detached here.
Napi::Value DetachView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "buffer");
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (detached) return Napi::Boolean::New(env, false);
  Owned o;
  if (!Lookup(env, ab, &o) || o.view == nullptr) {
    throw CodeError(env, "ERR_KSM_NOT_OWNED", "This buffer is not an arena buffer of node-ksm");
  }
  return DetachLight(env, ab, o);
}

// viewAttached(arrayBuffer, offset): whether a light view starting `offset` bytes into
// the mapping of `arrayBuffer` (an owner region: an arena chunk) is still attached. The
// arena asks when a buffer reaches release() already detached: by free(), which detached
// the view here too (false), or by ArrayBuffer.prototype.transfer() (or anything else that
// moves a backing store to a new ArrayBuffer), which left a live ArrayBuffer over the
// pages that this addon cannot see (true: the pages must not be reused).
Napi::Value ViewAttached(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "buffer");
  size_t offset = ToSize(env, info[1], "offset");
  Owned o = LiveOwned(env, ab);
  size_t page = Instance::Get(env)->pageSize;
  if (offset % page != 0) ThrowRangeError(env, "The value of \"offset\" must be page aligned");
  if (offset >= o.extent) ThrowRangeError(env, "The range is outside the buffer's mapping");
  Mapping* m = o.mapping;
  size_t index = (o.offset + offset) / page;
  return Napi::Boolean::New(env, m->views != nullptr && m->views[index] != nullptr);
}

// free(arrayBuffer): true if this call freed it, false if it was already freed.
// An owner region unmaps its mapping now and detaches every ArrayBuffer into it; a view
// region is only detached (its pages stay with the owner).
Napi::Value Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "buffer");
  Owned o;
  if (!Lookup(env, ab, &o)) {
    throw CodeError(env, "ERR_KSM_NOT_OWNED", "This buffer was not allocated by node-ksm");
  }
  if (o.view != nullptr) return DetachLight(env, ab, o);
  if (o.freed) return Napi::Boolean::New(env, false);
  Region* r = o.region;
  Mapping* m = r->mapping;
  if (!r->owner) {
    DetachRegion(env, r);
    return Napi::Boolean::New(env, true);
  }
  // Node runs external finalizers from a later tick, but hold the mapping (and iterate a
  // copy) so that a runtime that runs them during detach cannot pull it from under us.
  m->stores++;
  int64_t len = m->window ? 0 : static_cast<int64_t>(m->length);
  if (m->attached != 0) {
    // Light views are still attached (the arena detaches its buffers before it frees a
    // chunk, so this is only a safety net): never unmap under them. The memory goes back
    // now, they read zeros, and the last one's finalizer unmaps.
    madvise(m->base, m->length, MADV_DONTNEED);
    m->released = true;
  } else {
    // First, while a window's memory is still V8's and ours to madvise.
    Unmap(m);
  }
  std::vector<Region*> regions = m->regions;
  for (Region* other : regions) DetachRegion(env, other);
  int64_t ignored;
  if (len != 0) napi_adjust_external_memory(env, -len, &ignored);
  ReleaseStore(env, m);
  return Napi::Boolean::New(env, true);
}

// madvise(arrayBuffer, offset, length, advice) over whole pages of a region we own.
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "buffer");
  size_t offset = ToSize(env, info[1], "offset");
  size_t length = ToSize(env, info[2], "length");
  if (!info[3].IsNumber()) ThrowTypeError(env, "The \"advice\" argument must be of type number");
  int32_t advice = info[3].As<Napi::Number>().Int32Value();
  Owned o = LiveOwned(env, ab);
  Owned* r = &o;
  size_t page = Instance::Get(env)->pageSize;
  if (offset % page != 0) ThrowRangeError(env, "The value of \"offset\" must be page aligned");
  if (offset > r->extent || length > r->extent - offset) {
    ThrowRangeError(env, "The range is outside the buffer's mapping");
  }
  size_t len = std::min(RoundUp(length, page), r->extent - offset);
  if (len == 0) return env.Undefined();
  int adv;
  switch (advice) {
    case kMergeable:
      adv = MADV_MERGEABLE;
      break;
    case kUnmergeable:
      adv = MADV_UNMERGEABLE;
      break;
    case kDontNeed:
      adv = MADV_DONTNEED;
      break;
    default:
      ThrowRangeError(env, "The value of \"advice\" is out of range");
  }
  if (madvise(r->data() + offset, len, adv) != 0) throw ErrnoError(env, errno, "madvise");
  if (advice == kMergeable || advice == kUnmergeable) {
    bool whole = r->offset + offset == 0 && len == r->mapping->length;
    r->mapping->mergeable = whole ? (advice == kMergeable ? 1 : 0) : -1;
  }
  return env.Undefined();
}

// Pointer and length of the bytes of any ArrayBuffer or view. Who owns them: V8 or this
// addon; the caller only borrows them for the duration of one synchronous call.
bool ViewBytes(Napi::Env env, const Napi::Value& v, uint8_t** data, size_t* length) {
  Napi::ArrayBuffer ab;
  size_t offset = 0;
  if (!ViewOf(env, v, &ab, &offset, length)) return false;
  *data = static_cast<uint8_t*>(ab.Data()) + offset;
  return true;
}

// markMergeable(view, on): madvise the whole pages inside the view's bytes.
Napi::Value MarkMergeable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (info.Length() < 1 || !ViewBytes(env, info[0], &data, &length)) {
    ThrowTypeError(env, "The \"view\" argument must be an ArrayBuffer, TypedArray or DataView");
  }
  bool on = info.Length() < 2 || info[1].ToBoolean().Value();
  size_t page = Instance::Get(env)->pageSize;
  uintptr_t start = reinterpret_cast<uintptr_t>(data);
  uintptr_t end = start + length;
  uintptr_t first = (start + page - 1) / page * page;
  uintptr_t last = end / page * page;
  Napi::Object result = Napi::Object::New(env);
  size_t covered = (data != nullptr && last > first) ? last - first : 0;
  if (covered > 0 && madvise(reinterpret_cast<void*>(first), covered,
                             on ? MADV_MERGEABLE : MADV_UNMERGEABLE) != 0) {
    throw ErrnoError(env, errno, "madvise");
  }
  if (covered > 0) {
    // Advice given by address to one of our own buffers: the record no longer knows it.
    napi_value ab = info[0];
    if (info[0].IsTypedArray()) ab = info[0].As<Napi::TypedArray>().ArrayBuffer();
    if (info[0].IsDataView()) ab = info[0].As<Napi::DataView>().ArrayBuffer();
    Owned o;
    if (Lookup(env, ab, &o) && o.mapping != nullptr) o.mapping->mergeable = -1;
  }
  result.Set("offset",
             Napi::Number::New(env, covered > 0 ? static_cast<double>(first - start) : 0));
  result.Set("length", Napi::Number::New(env, static_cast<double>(covered)));
  return result;
}

// info(arrayBuffer): what the addon knows of an ArrayBuffer, or null if it is not ours.
Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = ArrayBufferArg(info, 0, "buffer");
  Owned own;
  if (!Lookup(env, ab, &own)) return env.Null();
  Owned* r = &own;
  Napi::Object o = Napi::Object::New(env);
  bool freed = own.freed;
  o.Set("freed", Napi::Boolean::New(env, freed));
  o.Set("owner", Napi::Boolean::New(env, r->owner));
  o.Set("length", Napi::Number::New(env, static_cast<double>(r->length)));
  o.Set("extent", Napi::Number::New(env, static_cast<double>(r->extent)));
  o.Set("mappingOffset", Napi::Number::New(env, static_cast<double>(r->offset)));
  o.Set("bufferOffset", Napi::Number::New(env, static_cast<double>(r->abOffset)));
  if (!freed) {
    o.Set("address",
          Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(r->data()))));
    o.Set("mappingAddress",
          Napi::BigInt::New(env,
                            static_cast<uint64_t>(reinterpret_cast<uintptr_t>(r->mapping->base))));
    o.Set("mappingLength", Napi::Number::New(env, static_cast<double>(r->mapping->length)));
    o.Set("mergeable", r->mapping->mergeable < 0
                           ? env.Null()
                           : Napi::Boolean::New(env, r->mapping->mergeable == 1));
  }
  return o;
}

// addressOf(view): the address of a view's first byte, for matching /proc/self/maps.
Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (info.Length() < 1 || !ViewBytes(env, info[0], &data, &length)) {
    ThrowTypeError(env, "The \"view\" argument must be an ArrayBuffer, TypedArray or DataView");
  }
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data)));
}

Napi::Value SetProcessMerging(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBoolean()) {
    ThrowTypeError(env, "The \"on\" argument must be of type boolean");
  }
  bool on = info[0].As<Napi::Boolean>().Value();
  if (prctl(PR_SET_MEMORY_MERGE, on ? 1 : 0, 0, 0, 0) != 0) throw ErrnoError(env, errno, "prctl");
  return env.Undefined();
}

Napi::Value ProcessMerging(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int r = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
  if (r < 0) throw ErrnoError(env, errno, "prctl");
  return Napi::Boolean::New(env, r != 0);
}

// trimHeap(): gives the C heap's free pages back to the system (glibc's malloc_trim,
// which also returns whole free pages inside the heap, not only at its top). False where
// the C library has no such call.
Napi::Value TrimHeap(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), TrimCHeap());
}

// flock(fd, op): non-blocking advisory lock; op 1 shared, 2 exclusive, 0 unlock.
// Returns false when another process holds a conflicting lock. Used for the machine-wide
// boost state, because a flock goes away with its process even after SIGKILL.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    ThrowTypeError(env, "The \"fd\" and \"op\" arguments must be of type number");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = info[1].As<Napi::Number>().Int32Value();
  int how;
  switch (op) {
    case 0:
      how = LOCK_UN;
      break;
    case 1:
      how = LOCK_SH | LOCK_NB;
      break;
    case 2:
      how = LOCK_EX | LOCK_NB;
      break;
    default:
      ThrowRangeError(env, "The value of \"op\" is out of range");
  }
  if (flock(fd, how) == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw ErrnoError(env, errno, "flock");
}

Napi::Value Counters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Instance* inst = Instance::Get(env);
  Napi::Object o = Napi::Object::New(env);
  o.Set("mappings", Napi::Number::New(env, static_cast<double>(inst->mappings)));
  o.Set("mappedBytes", Napi::Number::New(env, static_cast<double>(inst->mappedBytes)));
  o.Set("regions", Napi::Number::New(env, static_cast<double>(inst->regions)));
  o.Set("views", Napi::Number::New(env, static_cast<double>(inst->views)));
  return o;
}

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) {
    ThrowTypeError(env, "The \"errorClass\" argument must be of type function");
  }
  Instance::Get(env)->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

}  // namespace

bool ViewOf(Napi::Env env, const Napi::Value& v, Napi::ArrayBuffer* ab, size_t* offset,
            size_t* length) {
  if (v.IsArrayBuffer()) {
    *ab = v.As<Napi::ArrayBuffer>();
    *offset = 0;
    *length = ab->ByteLength();
    return true;
  }
  if (!v.IsTypedArray() && !v.IsDataView()) return false;
  // Asked through the "buffer" property first: for a view over a SharedArrayBuffer the
  // Node-API getters fail, and node-addon-api would throw a code-less Error.
  Napi::Value buffer = v.As<Napi::Object>().Get("buffer");
  if (!buffer.IsArrayBuffer()) return false;
  *ab = buffer.As<Napi::ArrayBuffer>();
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    *offset = ta.ByteOffset();
    *length = ta.ByteLength();
  } else {
    Napi::DataView dv = v.As<Napi::DataView>();
    *offset = dv.ByteOffset();
    *length = dv.ByteLength();
  }
  (void)env;
  return true;
}

Region* FindRegion(Napi::Env env, napi_value ab) {
  bool tagged = false;
  if (napi_check_object_type_tag(env, ab, &kRegionTag, &tagged) != napi_ok || !tagged) {
    return nullptr;
  }
  void* data = nullptr;
  if (napi_unwrap(env, ab, &data) != napi_ok || data == nullptr) return nullptr;
  Region* r = static_cast<Region*>(data);
  return r->magic == Region::kMagic ? r : nullptr;
}

namespace {

bool FromRegion(Napi::Env env, napi_value ab, Region* r, Owned* out) {
  out->region = r;
  out->mapping = r->mapping;
  out->offset = r->offset;
  out->abOffset = r->abOffset;
  out->length = r->length;
  out->extent = r->extent;
  out->owner = r->owner;
  out->freed = IsFreed(env, ab, r);
  return true;
}

bool Tagged(napi_env env, napi_value ab) {
  bool tagged = false;
  return napi_check_object_type_tag(env, ab, &kRegionTag, &tagged) == napi_ok && tagged;
}

// Lookup by address: an attached ArrayBuffer whose bytes start in one of our live mappings
// is a light view (on a page with an attached view) or the mapping's own region (at its
// base: regions always start there). False when the address says neither.
bool LookupByAddress(Napi::Env env, napi_value ab, void* data, size_t length, Owned* out) {
  Instance* inst = Instance::Get(env);
  if (data == nullptr || inst->live.empty()) return false;
  uintptr_t address = reinterpret_cast<uintptr_t>(data);
  auto it = inst->live.upper_bound(address);
  if (it == inst->live.begin()) return false;
  Mapping* m = (--it)->second;
  size_t offset = address - reinterpret_cast<uintptr_t>(m->base);
  size_t page = inst->pageSize;
  if (offset >= m->length || offset % page != 0) return false;
  ViewRec* v = m->views != nullptr ? m->views[offset / page] : nullptr;
  // At the base, a view of another length than the one attached there is the region.
  bool region = offset == 0 && (v == nullptr || v->length != length || Tagged(env, ab));
  if (v != nullptr && !region) {
    out->region = nullptr;
    out->view = v;
    out->mapping = m;
    out->offset = offset;
    out->abOffset = 0;
    out->length = length;
    out->extent = std::min(std::max(RoundUp(length, page), page), m->length - offset);
    out->owner = false;
    out->freed = m->released || m->unmapped;
    return true;
  }
  if (region) {
    for (Region* r : m->regions) {
      if (r->owner && r->storeLive && r->offset == 0) return FromRegion(env, ab, r, out);
    }
  }
  return false;
}

}  // namespace

bool Lookup(Napi::Env env, napi_value ab, Owned* out) {
  // By address first. Only the one address a light view and a region can share, a
  // mapping's base, needs the type tag to tell them apart. This keeps the tag and wrap
  // lookups (two private-property reads) off the arena's every alloc and release.
  void* data = nullptr;
  size_t length = 0;
  if (napi_get_arraybuffer_info(env, ab, &data, &length) != napi_ok) return false;
  if (LookupByAddress(env, ab, data, length, out)) return true;
  // Detached, window mode, or not ours at all: only the tag can tell.
  if (Region* r = FindRegion(env, ab)) return FromRegion(env, ab, r, out);
  return false;
}

// Whether this runtime refuses external ArrayBuffers: asked once, with a harmless probe.
bool RefusesExternalBuffers(Napi::Env env) {
#ifdef NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED
  (void)env;
  return true;
#else
  static uint8_t probe = 0;
  napi_value ab;
  return napi_create_external_arraybuffer(env, &probe, 1, nullptr, nullptr, &ab) ==
         napi_no_external_buffers_allowed;
#endif
}

void InitMapping(Napi::Env env, Napi::Object exports) {
  Instance::Get(env)->windowMode = RefusesExternalBuffers(env);
  exports.Set("mode",
              Napi::String::New(env, Instance::Get(env)->windowMode ? "window" : "external"));
  exports.Set("alloc", Napi::Function::New(env, Alloc, "alloc"));
  exports.Set("view", Napi::Function::New(env, View, "view"));
  exports.Set("detachView", Napi::Function::New(env, DetachView, "detachView"));
  exports.Set("viewAttached", Napi::Function::New(env, ViewAttached, "viewAttached"));
  exports.Set("free", Napi::Function::New(env, Free, "free"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("markMergeable", Napi::Function::New(env, MarkMergeable, "markMergeable"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
  exports.Set("setProcessMerging",
              Napi::Function::New(env, SetProcessMerging, "setProcessMerging"));
  exports.Set("processMerging", Napi::Function::New(env, ProcessMerging, "processMerging"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("trimHeap", Napi::Function::New(env, TrimHeap, "trimHeap"));
  exports.Set("counters", Napi::Function::New(env, Counters, "counters"));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  Napi::Object advice = Napi::Object::New(env);
  advice.Set("MERGEABLE", Napi::Number::New(env, kMergeable));
  advice.Set("UNMERGEABLE", Napi::Number::New(env, kUnmergeable));
  advice.Set("DONTNEED", Napi::Number::New(env, kDontNeed));
  exports.Set("advice", advice);
}

}  // namespace ksm
