/*
 * A malloc-counting interposer. Defining malloc and its siblings in the
 * executable makes every caller use them: the program, libc itself and the
 * statically linked CoreFlow (whose Rust allocator calls malloc and, for
 * large alignments, posix_memalign). Each one counts the call and forwards
 * to glibc's allocator through its exported __libc_* entry points, so the
 * memory is ordinary glibc memory and free() may come from either side.
 *
 * glibc-specific, which is all this test program needs. A counter catches
 * an allocation even when it is freed again within the same step, which a
 * before/after comparison of mallinfo2() would miss.
 */
#define _POSIX_C_SOURCE 200112L
#include "alloc_counter.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *ptr);

/* Updated atomically: fitting allocates on worker threads. */
static unsigned long allocations = 0;

static void counted(void) { __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED); }

unsigned long alloc_count(void) { return __atomic_load_n(&allocations, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    counted();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    counted();
    return __libc_calloc(count, size);
}

void *realloc(void *ptr, size_t size) {
    counted();
    return __libc_realloc(ptr, size);
}

void free(void *ptr) { __libc_free(ptr); }

int posix_memalign(void **out, size_t alignment, size_t size) {
    void *p;
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    counted();
    p = __libc_memalign(alignment, size);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    counted();
    return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    counted();
    return __libc_memalign(alignment, size);
}
