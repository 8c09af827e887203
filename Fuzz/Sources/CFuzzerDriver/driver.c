// Intentionally empty: the module only declares LLVMFuzzerRunDriver (include/CFuzzerDriver.h), which
// libclang_rt.fuzzer defines; SwiftPM needs one source file per C target.
#include "CFuzzerDriver.h"
