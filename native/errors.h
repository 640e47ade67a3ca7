// Turning failures into JS errors. Every error the addon throws comes from here so
// that `code`, `errno` and `syscall` look the same as Node's own fs errors.
#pragma once
#include <napi.h>

namespace ksm {

// errno -> "EINVAL". Unknown values become "E<number>" rather than a guess.
const char* ErrnoName(int err);

// A KsmError (the class registered by lib/errors.ts, or a plain Error before that)
// with code = errno name, errno = -err like libuv, and syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);

// A KsmError with one of the library's own codes (ERR_KSM_NOT_OWNED, ...).
Napi::Error CodeError(Napi::Env env, const char* code, const std::string& message);

// Node's own argument errors: TypeError ERR_INVALID_ARG_TYPE, RangeError ERR_OUT_OF_RANGE.
[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message);

}  // namespace ksm
