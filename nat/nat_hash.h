/*
 * nat_hash.h - libnat internal: an open-addressing index from a 64-bit hash
 * to a 32-bit slot number (a session, a client, a port set). The index holds
 * no keys: the caller's `eq` callback compares a candidate slot against the
 * key it looks for. Linear probing, deletion by backward shift, 8 bytes per
 * bucket, load <= 3/4.
 *
 * Growth is incremental: when the index must grow, a table twice the size is
 * made and the old one is migrated a few buckets per insert or delete, so no
 * single call pays for moving a million entries. Lookups read both tables
 * while a migration runs.
 */
#ifndef GW_NAT_HASH_H
#define GW_NAT_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NH_NONE UINT32_MAX

/* One bucket: ref = slot + 1 (0 = empty, UINT32_MAX = tombstone, which only
 * the old table of a migration holds), tag = low 32 bits of the hash. */
struct nh_bucket {
    uint32_t ref;
    uint32_t tag;
};

struct nat_hash {
    struct nh_bucket *cur; /* owned */
    uint32_t cur_mask;
    uint32_t cur_count;
    struct nh_bucket *old; /* owned; non-NULL while migrating */
    uint32_t old_mask;
    uint32_t old_count;
    uint32_t old_pos;
};

/* True when slot `slot` holds the key `key`. */
typedef bool (*nh_eq_fn)(const void *ctx, uint32_t slot, const void *key);

/* Makes an empty index sized for `expect` entries. Returns 0 or -1 (no memory). */
int nh_init(struct nat_hash *h, uint32_t expect);
/* Frees the buckets; *h becomes empty and unusable until nh_init. */
void nh_free(struct nat_hash *h);
/* Bytes of buckets held. */
size_t nh_bytes(const struct nat_hash *h);
/* Makes sure the next insert cannot fail. Returns 0 or -1 (no memory). */
int nh_reserve(struct nat_hash *h);
/* Inserts slot under `hash` (the key must not be present; nh_reserve first). */
void nh_insert(struct nat_hash *h, uint64_t hash, uint32_t slot);
/* Removes slot stored under `hash`. Returns 0, or -1 when it is not there. */
int nh_delete(struct nat_hash *h, uint64_t hash, uint32_t slot);
/* Replaces slot `from` stored under `hash` by `to` (same key). 0 or -1. */
int nh_replace(struct nat_hash *h, uint64_t hash, uint32_t from, uint32_t to);

/* Zeroed memory of `bytes`, 2 MiB-aligned, backed by huge pages when the
 * kernel can (lazily zeroed by the kernel). NULL when out of memory. */
void *nh_huge_alloc(size_t bytes);
/* Frees what nh_huge_alloc(bytes) gave. NULL is a no-op. */
void nh_huge_free(void *p, size_t bytes);

static inline uint32_t nh_count(const struct nat_hash *h)
{
    return h->cur_count + h->old_count;
}

/* The slot holding `key` (hashing to `hash`), or NH_NONE. Always inlined so
 * that `eq` is inlined too. */
__attribute__((always_inline)) static inline uint32_t
nh_find(const struct nat_hash *h, uint64_t hash, nh_eq_fn eq, const void *ctx, const void *key)
{
    uint32_t tag = (uint32_t)hash;
    uint32_t mask = h->cur_mask;
    const struct nh_bucket *b = h->cur;

    for (uint32_t i = tag & mask;; i = (i + 1) & mask) {
        if (b[i].ref == 0)
            break;
        if (b[i].tag == tag && eq(ctx, b[i].ref - 1, key))
            return b[i].ref - 1;
    }
    if (h->old == NULL)
        return NH_NONE;
    b = h->old;
    mask = h->old_mask;
    for (uint32_t i = tag & mask;; i = (i + 1) & mask) {
        if (b[i].ref == 0)
            break;
        if (b[i].ref != UINT32_MAX && b[i].tag == tag && eq(ctx, b[i].ref - 1, key))
            return b[i].ref - 1;
    }
    return NH_NONE;
}

/* Prefetches the bucket where a probe for `hash` starts. */
static inline void nh_prefetch(const struct nat_hash *h, uint64_t hash)
{
    __builtin_prefetch(&h->cur[(uint32_t)hash & h->cur_mask]);
}

/*
 * The first slot whose tag matches `hash` in the current table, or NH_NONE
 * when the probe meets an empty bucket first. A candidate still has to be
 * compared; when it is not the key, or while a migration runs (h->old),
 * fall back to nh_find. For batched lookups that prefetch.
 */
static inline uint32_t nh_candidate(const struct nat_hash *h, uint64_t hash)
{
    uint32_t tag = (uint32_t)hash, mask = h->cur_mask;
    const struct nh_bucket *b = h->cur;

    for (uint32_t i = tag & mask;; i = (i + 1) & mask) {
        if (b[i].ref == 0)
            return NH_NONE;
        if (b[i].tag == tag)
            return b[i].ref - 1;
    }
}

/* A 64-bit mixer for building hashes word by word. */
static inline uint64_t nh_mix(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return h;
}

/* Final avalanche: every input bit reaches the low 32 bits. */
static inline uint64_t nh_final(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

#endif /* GW_NAT_HASH_H */
