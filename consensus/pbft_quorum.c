/* pbft_quorum.c - quorum arithmetic, the one place it is written down. */
#include "pbft.h"

uint32_t pbft_f(uint32_t n)
{
    return n == 0 ? 0 : (n - 1) / 3;
}

/* Two quorums of size q out of n share at least 2q - n replicas; q =
 * ceil((n + f + 1) / 2) makes that >= f + 1, so every intersection holds a
 * correct replica.  For n = 3f + 1 this is exactly 2f + 1. */
uint32_t pbft_quorum(uint32_t n)
{
    return (n + pbft_f(n) + 2) / 2;
}

uint32_t pbft_weak(uint32_t n)
{
    return pbft_f(n) + 1;
}

uint32_t pbft_primary(uint64_t view, uint32_t n)
{
    return (uint32_t)(view % n);
}
