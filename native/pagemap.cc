// Page states of an address range from /proc/self/pagemap and, when readable (root),
// /proc/kpageflags: the exact per-range count of KSM pages where smaps can only describe
// a whole VMA (and the kernel joins neighbouring buffers into one VMA).
#include "pagemap.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "instance.h"
#include "mapping.h"

namespace ksm {

namespace {

constexpr uint64_t kPresent = 1ULL << 63;
constexpr uint64_t kSwapped = 1ULL << 62;
constexpr uint64_t kExclusive = 1ULL << 56;
constexpr uint64_t kPfnMask = (1ULL << 55) - 1;
constexpr uint64_t kKpfKsm = 1ULL << 21;
constexpr uint64_t kKpfZeroPage = 1ULL << 24;
constexpr size_t kBatch = 65536;  // entries per pread

class Fd {
 public:
  explicit Fd(const char* path) : fd_(open(path, O_RDONLY | O_CLOEXEC)) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1, Number.MAX_SAFE_INTEGER
// Frames closer than this are read in one run of /proc/kpageflags, the gap read along.
constexpr uint64_t kMaxFrameGap = 256;

// Reads `count` 8-byte entries at index `first`; short reads past the end are zeros.
bool ReadEntries(int fd, uint64_t first, size_t count, uint64_t* out) {
  size_t want = count * sizeof(uint64_t);
  size_t got = 0;
  auto* bytes = reinterpret_cast<char*>(out);
  while (got < want) {
    ssize_t n =
        pread(fd, bytes + got, want - got, static_cast<off_t>(first * sizeof(uint64_t) + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  std::fill(bytes + got, bytes + want, 0);
  return true;
}

size_t ToSize(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) {
    ThrowTypeError(env, std::string("The \"") + name + "\" argument must be of type number");
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > kMaxSafeInteger || std::floor(d) != d) {
    ThrowRangeError(env, std::string("The value of \"") + name + "\" is out of range");
  }
  return static_cast<size_t>(d);
}

// The first byte of the range pageStates() was asked about, once the arguments are known
// to be a view and a range inside it (or inside our buffer's own padding). Throws the
// JS error otherwise.
uintptr_t RangeStart(const Napi::CallbackInfo& info, size_t* length) {
  Napi::Env env = info.Env();
  Napi::Value target = info.Length() > 0 ? info[0] : env.Undefined();
  size_t byteLength = 0;
  size_t viewOffset = 0;
  Napi::ArrayBuffer ab;
  if (!ViewOf(env, target, &ab, &viewOffset, &byteLength)) {
    ThrowTypeError(
        env,
        "The \"view\" argument must be an ArrayBuffer, TypedArray or DataView over an ArrayBuffer");
  }
  size_t offset = ToSize(env, info[1], "offset");
  *length = ToSize(env, info[2], "length");

  size_t limit = byteLength;
  Owned own;
  Owned* r = Lookup(env, ab, &own) ? &own : nullptr;
  if (r != nullptr && r->freed) {
    throw CodeError(env, "ERR_KSM_FREED", "This buffer has already been freed");
  }
  // Ours: the region's page-rounded extent (its own zero padding) is in bounds too.
  if (r != nullptr && viewOffset <= r->abOffset + r->extent)
    limit = r->abOffset + r->extent - viewOffset;
  if (offset > limit || *length > limit - offset) {
    ThrowRangeError(env, "The range is outside the view");
  }
  return reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(ab.Data()) + viewOffset) + offset;
}

// What /proc/self/pagemap says of a run of pages.
struct Presence {
  uint64_t present = 0;
  uint64_t swapped = 0;
  uint64_t exclusive = 0;
  std::vector<uint64_t> pfns;  // of present pages, in address order (0 when hidden)
};

Presence ReadPagemap(Napi::Env env, uint64_t firstPage, uint64_t pages) {
  Presence p;
  if (pages == 0) return p;
  Fd pagemap("/proc/self/pagemap");
  if (pagemap.get() < 0) throw ErrnoError(env, errno, "open");
  std::vector<uint64_t> entries(std::min<uint64_t>(pages, kBatch));
  p.pfns.reserve(pages);
  for (uint64_t done = 0; done < pages;) {
    auto n = static_cast<size_t>(std::min<uint64_t>(pages - done, kBatch));
    if (!ReadEntries(pagemap.get(), firstPage + done, n, entries.data())) {
      throw ErrnoError(env, errno, "pread");
    }
    for (size_t i = 0; i < n; i++) {
      uint64_t e = entries[i];
      if ((e & kPresent) != 0) {
        p.present++;
        if ((e & kExclusive) != 0) p.exclusive++;
        p.pfns.push_back(e & kPfnMask);
      } else if ((e & kSwapped) != 0) {
        p.swapped++;
      }
    }
    done += n;
  }
  return p;
}

// The /proc/kpageflags entry of each frame in `frames` (sorted, distinct), read in runs:
// frames of freshly faulted memory mostly come in long consecutive stretches, so this
// is a few large reads. False when a read fails.
bool ReadFrameFlags(int fd, const std::vector<uint64_t>& frames, std::vector<uint64_t>* flags) {
  flags->resize(frames.size());
  std::vector<uint64_t> run;
  for (size_t i = 0; i < frames.size();) {
    size_t j = i + 1;
    while (j < frames.size() && frames[j] - frames[i] < kBatch &&
           frames[j] - frames[j - 1] <= kMaxFrameGap)
      j++;
    auto span = static_cast<size_t>(frames[j - 1] - frames[i] + 1);
    run.resize(span);
    if (!ReadEntries(fd, frames[i], span, run.data())) return false;
    for (size_t k = i; k < j; k++) (*flags)[k] = run[frames[k] - frames[i]];
    i = j;
  }
  return true;
}

// The KSM side of the result: distinct frames, and of the present pages those that are
// KSM pages and those that map the zero page. Each stays null when it cannot be known
// (frame numbers hidden without CAP_SYS_ADMIN, kpageflags unreadable).
struct FrameCounts {
  Napi::Value frames;
  Napi::Value ksm;
  Napi::Value zero;
};

FrameCounts CountFrames(Napi::Env env, const std::vector<uint64_t>& pfns) {
  FrameCounts out{env.Null(), env.Null(), env.Null()};
  // Frame numbers are hidden (read as 0) without CAP_SYS_ADMIN.
  if (std::none_of(pfns.begin(), pfns.end(), [](uint64_t p) { return p != 0; })) return out;
  std::vector<uint64_t> unique = pfns;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  out.frames = Napi::Number::New(env, static_cast<double>(unique.size()));
  Fd kpageflags("/proc/kpageflags");
  std::vector<uint64_t> flags;
  if (kpageflags.get() < 0 || !ReadFrameFlags(kpageflags.get(), unique, &flags)) return out;
  uint64_t ksmPages = 0;
  uint64_t zeroPages = 0;
  for (uint64_t pfn : pfns) {
    auto idx =
        static_cast<size_t>(std::lower_bound(unique.begin(), unique.end(), pfn) - unique.begin());
    uint64_t f = flags[idx];
    if ((f & kKpfKsm) != 0)
      ksmPages++;
    else if ((f & kKpfZeroPage) != 0)
      zeroPages++;
  }
  out.ksm = Napi::Number::New(env, static_cast<double>(ksmPages));
  out.zero = Napi::Number::New(env, static_cast<double>(zeroPages));
  return out;
}

// pageStates(view, offset, length): counts over the pages that overlap bytes
// [offset, offset+length) of the view. For a buffer of this addon the range may reach to
// the end of its last page (that padding is its own); for any other view it must stay
// inside the view. The bytes are only read as addresses, never dereferenced.
Napi::Value PageStates(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t length = 0;
  uintptr_t start = RangeStart(info, &length);
  size_t page = Instance::Get(env)->pageSize;
  uint64_t firstPage = start / page;
  uint64_t endPage = length == 0 ? firstPage : (start + length + page - 1) / page;
  uint64_t pages = endPage - firstPage;
  Presence p = ReadPagemap(env, firstPage, pages);
  FrameCounts frames = CountFrames(env, p.pfns);

  Napi::Object result = Napi::Object::New(env);
  result.Set("pages", Napi::Number::New(env, static_cast<double>(pages)));
  result.Set("present", Napi::Number::New(env, static_cast<double>(p.present)));
  result.Set("swapped", Napi::Number::New(env, static_cast<double>(p.swapped)));
  result.Set("exclusive", Napi::Number::New(env, static_cast<double>(p.exclusive)));
  result.Set("ksm", frames.ksm);
  result.Set("zero", frames.zero);
  result.Set("frames", frames.frames);
  result.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(firstPage * page)));
  return result;
}

}  // namespace

void InitPagemap(Napi::Env env, Napi::Object exports) {
  exports.Set("pageStates", Napi::Function::New(env, PageStates, "pageStates"));
}

}  // namespace ksm
