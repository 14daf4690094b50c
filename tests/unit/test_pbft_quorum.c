/* test_pbft_quorum.c - quorum arithmetic: f, quorum, weak certificate, primary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pbft.h"

typedef struct expect {
    uint32_t n, f, quorum, weak;
} expect;

static void test_small_clusters(void **state)
{
    (void)state;
    static const expect cases[] = {
        {4, 1, 3, 2},  /* n = 3f + 1: quorum 2f + 1 */
        {5, 1, 4, 2},  /* one spare replica: quorum ceil((5 + 2) / 2) = 4 */
        {6, 1, 4, 2},  /* ceil((6 + 2) / 2) = 4 */
        {7, 2, 5, 3},  /* n = 3f + 1 again */
        {10, 3, 7, 4}, /* n = 3f + 1 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const expect *e = &cases[i];
        assert_int_equal(pbft_f(e->n), e->f);
        assert_int_equal(pbft_quorum(e->n), e->quorum);
        assert_int_equal(pbft_weak(e->n), e->weak);
    }
}

static void test_primary_rotates(void **state)
{
    (void)state;
    assert_int_equal(pbft_primary(0, 4), 0);
    assert_int_equal(pbft_primary(1, 4), 1);
    assert_int_equal(pbft_primary(3, 4), 3);
    assert_int_equal(pbft_primary(4, 4), 0);
    assert_int_equal(pbft_primary(9, 5), 4);
    assert_int_equal(pbft_primary(13, 6), 1);
    assert_int_equal(pbft_primary(14, 7), 0);
    assert_int_equal(pbft_primary(23, 10), 3);
    /* Views are 64-bit; the primary is still view mod n. */
    assert_int_equal(pbft_primary(UINT64_MAX, 4), (uint32_t)(UINT64_MAX % 4));
    assert_int_equal(pbft_primary(((uint64_t)1 << 40) + 5, 7),
                     (uint32_t)((((uint64_t)1 << 40) + 5) % 7));
}

/* Safety needs any two quorums to share a correct replica (>= f + 1 in
 * common); liveness needs a quorum to exist without the f faulty ones. */
static void test_quorum_properties(void **state)
{
    (void)state;
    for (uint32_t n = 4; n <= 100; n++) {
        uint32_t f = pbft_f(n), q = pbft_quorum(n);
        assert_true(3 * f + 1 <= n);
        assert_true(3 * (f + 1) + 1 > n); /* f is the largest tolerable */
        assert_true(2 * q >= n + f + 1);  /* intersection 2q - n >= f + 1 */
        assert_true(q <= n - f);
        assert_true(q > n / 2);
        assert_int_equal(pbft_weak(n), f + 1);
        if (n % 3 == 1)
            assert_int_equal(q, 2 * f + 1);
        /* q is the smallest size with the intersection property. */
        assert_true(2 * (q - 1) < n + f + 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_clusters),
        cmocka_unit_test(test_primary_rotates),
        cmocka_unit_test(test_quorum_properties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
