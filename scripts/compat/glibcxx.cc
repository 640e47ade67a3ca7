// Linked into the prebuilds only (scripts/prebuild.sh). g++ >= 11 compiles node-addon-api's
// `new T[n]` into a call to std::__throw_bad_array_new_length, which libstdc++ exports
// only from GLIBCXX_3.4.29 (GCC 11). A hidden local copy keeps that version requirement
// out of the binary, so the prebuild loads on every glibc distro Node 20 supports (RHEL 8,
// Ubuntu 20.04), not just the ones with GCC 11's libstdc++.
#include <new>

namespace std {
[[noreturn]] __attribute__((visibility("hidden"))) void __throw_bad_array_new_length() {
  throw std::bad_array_new_length();
}
}  // namespace std
