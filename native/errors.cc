#include "errors.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "instance.h"

namespace ksm {

const char* ErrnoName(int err) {
  switch (err) {
    case EPERM:
      return "EPERM";
    case ENOENT:
      return "ENOENT";
    case ESRCH:
      return "ESRCH";
    case EINTR:
      return "EINTR";
    case EIO:
      return "EIO";
    case EBADF:
      return "EBADF";
    case EAGAIN:
      return "EAGAIN";
    case ENOMEM:
      return "ENOMEM";
    case EACCES:
      return "EACCES";
    case EFAULT:
      return "EFAULT";
    case EBUSY:
      return "EBUSY";
    case EEXIST:
      return "EEXIST";
    case ENODEV:
      return "ENODEV";
    case EINVAL:
      return "EINVAL";
    case ENFILE:
      return "ENFILE";
    case EMFILE:
      return "EMFILE";
    case EFBIG:
      return "EFBIG";
    case ENOSPC:
      return "ENOSPC";
    case EROFS:
      return "EROFS";
    case ERANGE:
      return "ERANGE";
    case ENOSYS:
      return "ENOSYS";
    case EOVERFLOW:
      return "EOVERFLOW";
    case ENOTSUP:
      return "ENOTSUP";
    case EHWPOISON:
      return "EHWPOISON";
    default:
      return nullptr;
  }
}

static Napi::Error MakeError(Napi::Env env, const std::string& message) {
  Instance* inst = Instance::Get(env);
  if (inst != nullptr && !inst->errorClass.IsEmpty()) {
    Napi::Function ctor = inst->errorClass.Value();
    Napi::Object obj = ctor.New({Napi::String::New(env, message)});
    return Napi::Error(env, obj);
  }
  return Napi::Error::New(env, message);
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* name = ErrnoName(err);
  std::string code = name != nullptr ? name : "E" + std::to_string(err);
  std::string message = code + ": " + std::strerror(err) + ", " + syscall;
  Napi::Error error = MakeError(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

Napi::Error CodeError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error error = MakeError(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

namespace {

template <typename E>
E WithCode(E error, const char* code) {
  error.Set("code", Napi::String::New(error.Env(), code));
  return error;
}

}  // namespace

void ThrowTypeError(Napi::Env env, const std::string& message) {
  throw WithCode(Napi::TypeError::New(env, message), "ERR_INVALID_ARG_TYPE");
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  throw WithCode(Napi::RangeError::New(env, message), "ERR_OUT_OF_RANGE");
}

}  // namespace ksm
