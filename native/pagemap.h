#pragma once
#include <napi.h>

namespace ksm {
void InitPagemap(Napi::Env env, Napi::Object exports);
}
