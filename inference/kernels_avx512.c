/* kernels_avx512.c - the AVX-512 VNNI path: kernels_avx2.c compiled again
 * with KN_VNNI, -mavx512vnni and -mavx512vl, so that the Q8_0 block sums use
 * 256-bit vpdpbusd (one instruction instead of vpsignb + vpmaddubsw +
 * vpmaddwd per pair, and 32 vector registers for bigger tiles).  Everything
 * else, and every float operation, is the AVX2 code as it stands, so the
 * bits are the same. */
#define KN_VNNI 1
#include "kernels_avx2.c"
