/* db_vfs.c - "gw-yield", a pass-through SQLite VFS whose files give the core
 * away every few page writes.
 *
 * Why: the writer thread's COMMIT writes every dirty page of the batch into
 * the WAL in one sqlite3_step (about 130 pages, 1-2 ms on this kind of
 * machine). When gwd shares a core with its store, the loop thread waits for
 * the whole of it and every connection in flight waits with it: the
 * connection-rate p99 shows it (docs/store.md, "Scheduling"). A file opened
 * through this VFS calls sched_yield() after every YIELD_EVERY writes, so a
 * loop waiting for the core gets it within a fraction of a millisecond; the
 * yield is one system call that does nothing when no other thread wants the
 * core.
 *
 * Everything else goes to the default VFS ("unix") unchanged: the real file
 * object lives right after ours, so locks, the WAL index and the inode
 * bookkeeping are those of the default VFS and shared with the store's other
 * connections (the checkpointer, readers) that do not use this one.
 */
#include "db/db_int.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

/* 16 pages of 8 KiB: about 0.1-0.2 ms of pwrite between two yields. */
#define YIELD_EVERY 16

struct yfile {
    sqlite3_file base; /* pMethods = &ymethods (or NULL when the open failed) */
    unsigned writes;
    sqlite3_file *real; /* points just past this struct, inside the same allocation */
};

static sqlite3_vfs yvfs;
static _Atomic unsigned long yields; /* for db__yield_vfs_yields() */
static int yvfs_rc = SQLITE_ERROR;
static pthread_once_t yvfs_once = PTHREAD_ONCE_INIT;

static sqlite3_file *real_of(sqlite3_file *f)
{
    return ((struct yfile *)f)->real;
}

static int y_close(sqlite3_file *f)
{
    return real_of(f)->pMethods->xClose(real_of(f));
}

static int y_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return real_of(f)->pMethods->xRead(real_of(f), buf, n, off);
}

static int y_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    struct yfile *y = (struct yfile *)f;
    int rc = y->real->pMethods->xWrite(y->real, buf, n, off);

    if (++y->writes % YIELD_EVERY == 0) {
        atomic_fetch_add_explicit(&yields, 1, memory_order_relaxed);
        sched_yield();
    }
    return rc;
}

static int y_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return real_of(f)->pMethods->xTruncate(real_of(f), size);
}

static int y_sync(sqlite3_file *f, int flags)
{
    return real_of(f)->pMethods->xSync(real_of(f), flags);
}

static int y_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return real_of(f)->pMethods->xFileSize(real_of(f), size);
}

static int y_lock(sqlite3_file *f, int level)
{
    return real_of(f)->pMethods->xLock(real_of(f), level);
}

static int y_unlock(sqlite3_file *f, int level)
{
    return real_of(f)->pMethods->xUnlock(real_of(f), level);
}

static int y_check_reserved(sqlite3_file *f, int *out)
{
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}

static int y_file_control(sqlite3_file *f, int op, void *arg)
{
    return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}

static int y_sector_size(sqlite3_file *f)
{
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}

static int y_device_chars(sqlite3_file *f)
{
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}

static int y_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
    return real_of(f)->pMethods->xShmMap(real_of(f), region, size, extend, out);
}

static int y_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}

static void y_shm_barrier(sqlite3_file *f)
{
    real_of(f)->pMethods->xShmBarrier(real_of(f));
}

static int y_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return real_of(f)->pMethods->xShmUnmap(real_of(f), delete_flag);
}

static int y_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **out)
{
    return real_of(f)->pMethods->xFetch(real_of(f), off, n, out);
}

static int y_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return real_of(f)->pMethods->xUnfetch(real_of(f), off, p);
}

/* Two method tables, one per version the real file may have: SQLite looks at
 * iVersion before it calls the shm or fetch methods, so ours must not claim
 * more than the real file has. */
static const sqlite3_io_methods ymethods[3] = {
    [0] = {1, y_close, y_read, y_write, y_truncate, y_sync, y_file_size, y_lock, y_unlock,
           y_check_reserved, y_file_control, y_sector_size, y_device_chars, NULL, NULL, NULL,
           NULL, NULL, NULL},
    [1] = {2, y_close, y_read, y_write, y_truncate, y_sync, y_file_size, y_lock, y_unlock,
           y_check_reserved, y_file_control, y_sector_size, y_device_chars, y_shm_map,
           y_shm_lock, y_shm_barrier, y_shm_unmap, NULL, NULL},
    [2] = {3, y_close, y_read, y_write, y_truncate, y_sync, y_file_size, y_lock, y_unlock,
           y_check_reserved, y_file_control, y_sector_size, y_device_chars, y_shm_map,
           y_shm_lock, y_shm_barrier, y_shm_unmap, y_fetch, y_unfetch},
};

/* The default VFS, called with its own struct (its functions may look at
 * their vfs argument). */
#define REAL(vfs) ((sqlite3_vfs *)(vfs)->pAppData)

static int y_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                  int *out_flags)
{
    sqlite3_vfs *real = REAL(vfs);
    struct yfile *y = (struct yfile *)f;
    int rc;

    memset(y, 0, sizeof(*y));
    y->real = (sqlite3_file *)((char *)f + sizeof(struct yfile));
    rc = real->xOpen(real, name, y->real, flags, out_flags);
    /* A failed open may still have set pMethods (then SQLite calls xClose):
     * ours only where the real file has some. */
    if (y->real->pMethods != NULL) {
        int v = y->real->pMethods->iVersion;

        y->base.pMethods = &ymethods[v < 1 ? 0 : v > 3 ? 2 : v - 1];
    }
    return rc;
}

static int v_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    return REAL(v)->xDelete(REAL(v), name, sync_dir);
}

static int v_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    return REAL(v)->xAccess(REAL(v), name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    return REAL(v)->xFullPathname(REAL(v), name, n, out);
}

static void *v_dlopen(sqlite3_vfs *v, const char *name)
{
    return REAL(v)->xDlOpen(REAL(v), name);
}

static void v_dlerror(sqlite3_vfs *v, int n, char *out)
{
    REAL(v)->xDlError(REAL(v), n, out);
}

static void (*v_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    return REAL(v)->xDlSym(REAL(v), h, sym);
}

static void v_dlclose(sqlite3_vfs *v, void *h)
{
    REAL(v)->xDlClose(REAL(v), h);
}

static int v_randomness(sqlite3_vfs *v, int n, char *out)
{
    return REAL(v)->xRandomness(REAL(v), n, out);
}

static int v_sleep(sqlite3_vfs *v, int us)
{
    return REAL(v)->xSleep(REAL(v), us);
}

static int v_current_time(sqlite3_vfs *v, double *out)
{
    return REAL(v)->xCurrentTime(REAL(v), out);
}

static int v_last_error(sqlite3_vfs *v, int n, char *out)
{
    return REAL(v)->xGetLastError(REAL(v), n, out);
}

static int v_current_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    return REAL(v)->xCurrentTimeInt64(REAL(v), out);
}

static void yvfs_setup(void)
{
    sqlite3_vfs *real = sqlite3_vfs_find(NULL);

    /* version 2 (no system call hooks): what the unix VFS has had since 3.7 */
    if (real == NULL || real->iVersion < 2)
        return;
    yvfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(struct yfile) + real->szOsFile,
        .mxPathname = real->mxPathname,
        .zName = DB_YIELD_VFS,
        .pAppData = real,
        .xOpen = y_open,
        .xDelete = v_delete,
        .xAccess = v_access,
        .xFullPathname = v_full_pathname,
        .xDlOpen = v_dlopen,
        .xDlError = v_dlerror,
        .xDlSym = v_dlsym,
        .xDlClose = v_dlclose,
        .xRandomness = v_randomness,
        .xSleep = v_sleep,
        .xCurrentTime = v_current_time,
        .xGetLastError = v_last_error,
        .xCurrentTimeInt64 = v_current_time64,
    };
    yvfs_rc = sqlite3_vfs_register(&yvfs, 0);
}

/* Registers "gw-yield" once per process; SQLITE_OK when it can be used. */
int db__yield_vfs(void)
{
    (void)pthread_once(&yvfs_once, yvfs_setup);
    return yvfs_rc;
}

unsigned long db__yield_vfs_yields(void)
{
    return atomic_load_explicit(&yields, memory_order_relaxed);
}
