/* fuzz.h - the contract between a fuzz harness and its drivers.
 *
 * Each harness defines LLVMFuzzerTestOneInput (libFuzzer's entry point) and
 * fuzz_seed, which writes the i-th well-formed seed input.  With
 * FEDBFT_FUZZ=ON the harness links libFuzzer; otherwise it links
 * fuzz_replay.c, which runs the seeds and deterministic mutations of them
 * under ctest (and ASan in the sanitizer build), so hostile inputs are
 * exercised on every CI run.
 */
#ifndef FB_FUZZ_H
#define FB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write seed i into buf (capacity cap); return its length, or 0 when there is
 * no seed i. */
size_t fuzz_seed(int i, uint8_t *buf, size_t cap);

#endif
