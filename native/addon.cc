// Registers the exports. Each concern lives in its own file.
#include <napi.h>
#include <unistd.h>

#include "instance.h"
#include "mapping.h"
#include "pagemap.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* inst = new ksm::Instance();
  long page = sysconf(_SC_PAGESIZE);
  inst->pageSize = page > 0 ? static_cast<size_t>(page) : 4096;
  env.SetInstanceData<ksm::Instance>(inst);
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(inst->pageSize)));
  // USER_HZ, the unit of the CPU times in /proc/<pid>/stat; 0 when sysconf cannot say.
  long ticks = sysconf(_SC_CLK_TCK);
  exports.Set("clockTicks", Napi::Number::New(env, ticks > 0 ? static_cast<double>(ticks) : 0));
  ksm::InitMapping(env, exports);
  ksm::InitPagemap(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ksm, Init)
