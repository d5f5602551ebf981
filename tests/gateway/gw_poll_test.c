/*
 * gw_poll_test.c - gwd's own epoll set for the flows' sockets: reports
 * served first-in first-out within a pass, lazy stop (the fd leaves the set
 * at its next unwanted report), a watcher forgotten during a pass is not
 * called for the rest of it, and a socket the set refuses gets EV_ERROR.
 * Real socketpairs in a real libev loop.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/gwd.h" /* gw_poll.h, struct gw_ratelimit */

#define N 4

static struct ev_loop *loop;
static struct gw_poll poll_set;
static struct gw_ratelimit warn_rl;
static int sp[N][2]; /* [i][0] watched, [i][1] its peer */
static struct gw_io io[N];
static int order[16], n_order;
static int last_revents[N];
static int forget_target = -1; /* the callback of io[0] forgets this one */

static void record(struct gw_io *w, int revents)
{
    int i = (int)(w - io);
    char buf[64];
    cr_assert(i >= 0 && i < N);
    last_revents[i] = revents;
    if (n_order < 16)
        order[n_order++] = i;
    if (revents & EV_READ)
        (void)read(w->fd, buf, sizeof(buf));
    if (i == 0 && forget_target >= 0) {
        gw_io_forget(&poll_set, &io[forget_target]);
        close(sp[forget_target][0]);
        sp[forget_target][0] = -1;
    }
}

static void setup(void)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert_not_null(loop);
    cr_assert_eq(gw_poll_init(&poll_set, loop, &warn_rl), 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp[i]), 0);
        gw_io_init(&io[i], record, sp[i][0], EV_READ);
        gw_io_start(&poll_set, &io[i]);
    }
    n_order = 0;
    forget_target = -1;
    memset(last_revents, 0, sizeof(last_revents));
}

static void teardown(void)
{
    for (int i = 0; i < N; i++) {
        gw_io_forget(&poll_set, &io[i]);
        for (int k = 0; k < 2; k++)
            if (sp[i][k] >= 0)
                close(sp[i][k]);
    }
    gw_poll_destroy(&poll_set);
    ev_loop_destroy(loop);
}

/* One pass of the libev loop (the set is readable by then). */
static void pass(void)
{
    ev_run(loop, EVRUN_NOWAIT);
}

TestSuite(gw_poll, .init = setup, .fini = teardown);

Test(gw_poll, serves_in_the_order_the_sockets_became_ready)
{
    int ready[N] = {2, 0, 3, 1};
    for (int k = 0; k < N; k++)
        cr_assert_eq(write(sp[ready[k]][1], "x", 1), 1);
    pass();
    cr_assert_eq(n_order, N, "%d callbacks", n_order);
    for (int k = 0; k < N; k++)
        cr_expect_eq(order[k], ready[k], "callback %d was io[%d], expected io[%d]", k, order[k],
                     ready[k]);
    cr_expect_eq(last_revents[2], EV_READ);
    cr_expect_eq(poll_set.passes, 1);
}

Test(gw_poll, start_registers_once_and_a_stop_is_lazy)
{
    uint64_t ctl = poll_set.ctl;
    gw_io_stop(&poll_set, &io[1]);
    gw_io_start(&poll_set, &io[1]); /* same interest: no epoll_ctl */
    cr_expect_eq(poll_set.ctl, ctl);

    gw_io_stop(&poll_set, &io[1]);
    cr_expect_eq(poll_set.ctl, ctl, "a stop alone changes nothing in the kernel");
    cr_assert_eq(write(sp[1][1], "x", 1), 1);
    pass();
    cr_expect_eq(n_order, 0, "a stopped watcher was called");
    cr_expect_eq(poll_set.ctl, ctl + 1, "its unwanted report takes it out of the set");
    cr_expect_eq(io[1].kernel, 0);
    pass(); /* still readable, but out of the set: no report, no call */
    cr_expect_eq(n_order, 0);
    cr_expect_eq(poll_set.ctl, ctl + 1);

    gw_io_start(&poll_set, &io[1]); /* back in, and the byte is still there */
    pass();
    cr_expect_eq(n_order, 1);
    cr_expect_eq(order[0], 1);
}

Test(gw_poll, narrows_the_interest_at_an_unwanted_report)
{
    gw_io_stop(&poll_set, &io[3]);
    gw_io_set(&io[3], sp[3][0], EV_READ | EV_WRITE);
    gw_io_start(&poll_set, &io[3]); /* writable at once */
    pass();
    cr_assert_eq(n_order, 1);
    cr_expect_eq(last_revents[3], EV_WRITE);
    gw_io_stop(&poll_set, &io[3]);
    gw_io_set(&io[3], sp[3][0], EV_READ);
    gw_io_start(&poll_set, &io[3]); /* the set still has EPOLLOUT too */
    cr_expect_eq(io[3].kernel, EV_READ | EV_WRITE);
    pass(); /* writable again: not wanted, narrowed to EPOLLIN */
    cr_expect_eq(n_order, 1);
    cr_expect_eq(io[3].kernel, EV_READ);
    cr_assert_eq(write(sp[3][1], "x", 1), 1);
    pass();
    cr_expect_eq(n_order, 2);
    cr_expect_eq(last_revents[3], EV_READ);
}

Test(gw_poll, a_watcher_forgotten_during_a_pass_is_not_called)
{
    forget_target = 2;
    cr_assert_eq(write(sp[0][1], "x", 1), 1);
    cr_assert_eq(write(sp[2][1], "x", 1), 1);
    cr_assert_eq(write(sp[1][1], "x", 1), 1);
    pass();
    cr_assert_eq(n_order, 2, "%d callbacks", n_order);
    cr_expect_eq(order[0], 0);
    cr_expect_eq(order[1], 1);
}

Test(gw_poll, a_socket_the_set_refuses_gets_ev_error)
{
    FILE *f = tmpfile(); /* a regular file: epoll_ctl says EPERM */
    cr_assert_not_null(f);
    struct gw_io w;
    gw_io_init(&w, record, fileno(f), EV_READ);
    /* record() indexes io[]: use io[1]'s slot for it */
    gw_io_forget(&poll_set, &io[1]);
    io[1] = w;
    gw_io_start(&poll_set, &io[1]);
    cr_expect(io[1].failed);
    pass();
    cr_assert_eq(n_order, 1);
    cr_expect_eq(order[0], 1);
    cr_expect_eq(last_revents[1], EV_ERROR);
    cr_expect_not(io[1].failed);
    pass(); /* once only */
    cr_expect_eq(n_order, 1);
    gw_io_forget(&poll_set, &io[1]);
    io[1].fd = sp[1][0];
    fclose(f);
}

static struct gw_io *victim;
static int error_calls;

static void forget_victim(struct gw_io *w, int revents)
{
    (void)w;
    cr_expect_eq(revents, EV_ERROR);
    error_calls++;
    if (victim) {
        gw_io_forget(&poll_set, victim);
        victim = NULL;
    }
}

Test(gw_poll, an_ev_error_callback_may_forget_another_failed_watcher)
{
    FILE *f1 = tmpfile(), *f2 = tmpfile();
    cr_assert(f1 && f2);
    struct gw_io a, b;
    gw_io_init(&a, forget_victim, fileno(f1), EV_READ);
    gw_io_init(&b, forget_victim, fileno(f2), EV_READ);
    gw_io_start(&poll_set, &a);
    gw_io_start(&poll_set, &b);
    cr_assert(a.failed && b.failed);
    victim = &a; /* b is served first (the list is last-in first-out) and forgets a */
    error_calls = 0;
    pass();
    cr_expect_eq(error_calls, 1);
    cr_expect_not(a.failed);
    cr_expect_null(poll_set.failed);
    pass();
    cr_expect_eq(error_calls, 1);
    gw_io_forget(&poll_set, &b);
    fclose(f1);
    fclose(f2);
}
