/* Counts the heap allocations of the whole process; see alloc_counter.c. */
#ifndef ALLOC_COUNTER_H
#define ALLOC_COUNTER_H

/* Calls of malloc, calloc, realloc, posix_memalign, aligned_alloc and
 * memalign so far, from any thread and any library. */
unsigned long alloc_count(void);

#endif
