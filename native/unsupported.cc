// Built on platforms without KSM so that installing never fails there: the module loads,
// exports nothing, and lib/binding.ts reports the platform as unsupported.
#include <napi.h>

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("unsupported", Napi::Boolean::New(env, true));
  return exports;
}
}  // namespace

NODE_API_MODULE(ksm, Init)
