/*
 * nat_hash.c - libnat internal: the open-addressing index with incremental
 * growth (see nat_hash.h).
 */
#include "nat/nat_hash.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/*
 * Bucket arrays of 2 MiB and more are mapped directly, 2 MiB-aligned, and
 * asked to be backed by transparent huge pages: a random probe into a 16 MiB
 * index then costs one cache miss instead of a cache miss plus a page walk.
 * The kernel zeroes their pages on first touch, so making a big table (when
 * an index grows) costs no pass over it.
 */
#define NH_HUGE ((size_t)2 << 20)

/* Buckets moved from the old table per insert or delete while migrating. A
 * new table has room for (cap_new * 3/4 - cap_old * 3/4) = cap_old * 3/4
 * inserts before it must grow again; moving 16 per insert empties the old
 * table (cap_old buckets) long before that. */
#define NH_MIGRATE_STEP 16
#define NH_MIN_CAP 16u
#define NH_MAX_CAP (1u << 31)

static size_t buckets_bytes(uint64_t n)
{
    return (size_t)n * sizeof(struct nh_bucket);
}

void *nh_huge_alloc(size_t bytes)
{
    uint8_t *raw, *p;

    bytes = (bytes + NH_HUGE - 1) & ~(NH_HUGE - 1);
    /* map 2 MiB more and trim to alignment */
    raw = mmap(NULL, bytes + NH_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    p = (uint8_t *)(((uintptr_t)raw + NH_HUGE - 1) & ~(uintptr_t)(NH_HUGE - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    if (p + bytes < raw + bytes + NH_HUGE)
        munmap(p + bytes, (size_t)(raw + bytes + NH_HUGE - (p + bytes)));
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: failure is harmless */
#endif
    return p;
}

void nh_huge_free(void *p, size_t bytes)
{
    if (p != NULL)
        munmap(p, (bytes + NH_HUGE - 1) & ~(NH_HUGE - 1));
}

static struct nh_bucket *buckets_new(uint64_t n)
{
    if (buckets_bytes(n) < NH_HUGE)
        return calloc(n, sizeof(struct nh_bucket));
    return nh_huge_alloc(buckets_bytes(n));
}

static void buckets_free(struct nh_bucket *b, uint64_t n)
{
    if (b == NULL)
        return;
    if (buckets_bytes(n) < NH_HUGE)
        free(b);
    else
        nh_huge_free(b, buckets_bytes(n));
}

static void place(struct nh_bucket *b, uint32_t mask, uint32_t ref, uint32_t tag)
{
    uint32_t i = tag & mask;

    while (b[i].ref != 0)
        i = (i + 1) & mask;
    b[i].ref = ref;
    b[i].tag = tag;
}

static void migrate(struct nat_hash *h, uint32_t n)
{
    while (h->old != NULL && n-- > 0) {
        struct nh_bucket *ob = &h->old[h->old_pos];

        if (ob->ref != 0 && ob->ref != UINT32_MAX) {
            place(h->cur, h->cur_mask, ob->ref, ob->tag);
            h->cur_count++;
            h->old_count--;
            ob->ref = UINT32_MAX;
        }
        if (h->old_pos++ == h->old_mask) {
            buckets_free(h->old, (uint64_t)h->old_mask + 1);
            h->old = NULL;
            h->old_mask = 0;
            h->old_pos = 0;
        }
    }
}

int nh_init(struct nat_hash *h, uint32_t expect)
{
    uint64_t want = (uint64_t)expect * 4 / 3 + 1;
    uint32_t cap = NH_MIN_CAP;

    while (cap < want && cap < NH_MAX_CAP)
        cap <<= 1;
    *h = (struct nat_hash){0};
    h->cur = buckets_new(cap);
    if (h->cur == NULL)
        return -1;
    h->cur_mask = cap - 1;
    return 0;
}

void nh_free(struct nat_hash *h)
{
    if (h->cur != NULL)
        buckets_free(h->cur, (uint64_t)h->cur_mask + 1);
    if (h->old != NULL)
        buckets_free(h->old, (uint64_t)h->old_mask + 1);
    *h = (struct nat_hash){0};
}

size_t nh_bytes(const struct nat_hash *h)
{
    size_t n = (size_t)h->cur_mask + 1;

    if (h->old != NULL)
        n += (size_t)h->old_mask + 1;
    return n * sizeof(struct nh_bucket);
}

int nh_reserve(struct nat_hash *h)
{
    uint64_t cap = (uint64_t)h->cur_mask + 1;
    uint64_t need = (uint64_t)nh_count(h) + 1;
    struct nh_bucket *nb;

    if (need * 4 <= cap * 3)
        return 0;
    if (h->old != NULL)
        migrate(h, UINT32_MAX); /* cannot happen at the step above; be safe */
    if (cap >= NH_MAX_CAP)
        return need < cap ? 0 : -1;
    nb = buckets_new(cap * 2);
    if (nb == NULL)
        return need < cap ? 0 : -1;
    h->old = h->cur;
    h->old_mask = h->cur_mask;
    h->old_count = h->cur_count;
    h->old_pos = 0;
    h->cur = nb;
    h->cur_mask = (uint32_t)(cap * 2 - 1);
    h->cur_count = 0;
    return 0;
}

void nh_insert(struct nat_hash *h, uint64_t hash, uint32_t slot)
{
    if (h->old != NULL)
        migrate(h, NH_MIGRATE_STEP);
    place(h->cur, h->cur_mask, slot + 1, (uint32_t)hash);
    h->cur_count++;
}

static void shift_delete(struct nh_bucket *b, uint32_t mask, uint32_t i)
{
    uint32_t j = i;

    for (;;) {
        uint32_t k;

        j = (j + 1) & mask;
        if (b[j].ref == 0)
            break;
        k = b[j].tag & mask;
        /* move b[j] into the hole when its home is not in (i, j] */
        if (j > i ? (k <= i || k > j) : (k <= i && k > j)) {
            b[i] = b[j];
            i = j;
        }
    }
    b[i].ref = 0;
}

static struct nh_bucket *find_ref(struct nh_bucket *b, uint32_t mask, uint32_t tag, uint32_t ref)
{
    for (uint32_t i = tag & mask;; i = (i + 1) & mask) {
        if (b[i].ref == 0)
            return NULL;
        if (b[i].ref == ref)
            return &b[i];
    }
}

int nh_delete(struct nat_hash *h, uint64_t hash, uint32_t slot)
{
    uint32_t tag = (uint32_t)hash;
    struct nh_bucket *b = find_ref(h->cur, h->cur_mask, tag, slot + 1);
    int rc = 0;

    if (b != NULL) {
        shift_delete(h->cur, h->cur_mask, (uint32_t)(b - h->cur));
        h->cur_count--;
    } else if (h->old != NULL && (b = find_ref(h->old, h->old_mask, tag, slot + 1)) != NULL) {
        b->ref = UINT32_MAX;
        h->old_count--;
    } else {
        rc = -1;
    }
    if (h->old != NULL)
        migrate(h, NH_MIGRATE_STEP);
    return rc;
}

int nh_replace(struct nat_hash *h, uint64_t hash, uint32_t from, uint32_t to)
{
    uint32_t tag = (uint32_t)hash;
    struct nh_bucket *b = find_ref(h->cur, h->cur_mask, tag, from + 1);

    if (b == NULL && h->old != NULL)
        b = find_ref(h->old, h->old_mask, tag, from + 1);
    if (b == NULL)
        return -1;
    b->ref = to + 1;
    return 0;
}
