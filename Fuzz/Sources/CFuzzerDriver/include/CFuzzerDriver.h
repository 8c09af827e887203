#ifndef CFUZZERDRIVER_H
#define CFUZZERDRIVER_H

#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry point for programs that have their own main (compiler-rt FuzzerDriver.cpp, LLVM 11+).
// SwiftPM links every executable target with `--defsym main=<Target>_main`, so libFuzzer's own main never runs:
// EvServerFuzz defines <Target>_main and hands over to libFuzzer here.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
