/* gc_team.h: how many threads a call runs on, and the shared-core guard.
 *
 * A model's kernels split their work statically across an OpenMP team and meet at
 * barriers.  When another process shares one of the team's cores, the scheduler gives
 * that core to the other process for a time slice at a time, and every barrier waits for
 * the descheduled thread: on 2 vCPUs with a busy loop on one of them, W1 trains at
 * 16k-24k samples/s on two threads against 42k on one.
 *
 * The guard notices this from the kernel's own account of it.  About every
 * GC_GUARD_EVERY seconds a team call is sampled: each thread reads how long it has waited
 * for a CPU while runnable (run_delay, the second field of /proc/thread-self/schedstat)
 * before and after its part.  Every GC_GUARD_SAMPLES samples the guard judges: if the
 * threads' waiting, summed, exceeds GC_GUARD_WAIT of the samples' time, the model runs on
 * fewer threads for a stretch, then tries the whole team again.  The team drops as many
 * threads as the summed waiting rounds to, at least one (a thread sharing its core with
 * one busy process waits about half the time: two threads become one), and keeps no more
 * threads than the process has CPUs; during the stretch the smaller team is judged the
 * same way and drops more threads while it still waits.  Each failed try doubles the
 * stretch (GC_GUARD_STRETCH up to GC_GUARD_STRETCH_MAX seconds); a passed one resets it.
 * A try samples every call and a clear case is judged early, so that a try on a core
 * still shared costs a few calls.  The first stretch is short because most waiting on an
 * otherwise idle machine is brief (another thread pool winding down).  A sample costs
 * each thread about 10 us (the file opened and read twice), hence one per 10 ms outside a
 * try.  Measured on 2 vCPUs training W1: idle, the judged waiting stayed below 10% for
 * 20 s (about 300 judgements); with a busy loop on one vCPU it was 54-77%.  Four threads
 * on the 2 vCPUs, idle, waited 55-60% in all (libgomp throttles the spinning of a team
 * larger than the CPUs) and train W1 at 66k-79k samples/s on two, 59k-66k on four.
 *
 * The kernels give the same bits on any team size (tests/test_team.py), so the guard
 * changes only speed.  -DGC_GUARD=0 turns it off; without OpenMP or on a system with no
 * schedstat file it is off by itself. */
#ifndef GC_TEAM_H
#define GC_TEAM_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __linux__
#include <fcntl.h>
#include <unistd.h>
#endif

/* Below this many floating-point operations per call, one thread is faster than a team:
   waking the team and syncing it at the kernels' barriers costs about a microsecond each
   time.  Measured on 2 Zen 4 cores: two threads make a 0.5 MFLOP Adam step 1.5x slower, a
   1.2 MFLOP one breaks even and a 2.9 MFLOP one gains 15-20% -- but only while each
   thread has a core to itself: on a shared VM the same two-thread step has run 2.5x
   slower than one thread for minutes at a time (W2: 273k against 679k samples/s, nothing
   else running).  8 MFLOP keeps small models out of that. */
#ifndef GC_TEAM_FLOPS
#define GC_TEAM_FLOPS 8e6
#endif

#ifndef GC_GUARD
#define GC_GUARD 1
#endif
#define GC_GUARD_EVERY 0.01      /* seconds from the end of one sample to the next */
#define GC_GUARD_SAMPLES 16      /* samples per judgement */
#define GC_GUARD_WAIT 0.30       /* waiting / time above which the team is given up */
#define GC_GUARD_EARLY 0.01      /* seconds of samples enough for a clear case ... */
#define GC_GUARD_EARLY_TRY 0.002 /* ... or in a try, where the core was shared just now */
#define GC_GUARD_CLEAR 0.50      /* ... of this much waiting */
#define GC_GUARD_STRETCH 0.02    /* seconds on fewer threads after a first failed judgement */
#define GC_GUARD_STRETCH_MAX 3.2 /* ... and at most, while the core stays shared */

typedef struct {
    int team;         /* threads of the current call */
    int sampled;      /* the current call is sampled */
    int asked;        /* threads the current call was asked to run on */
    int off;          /* no run_delay to read here */
    int drop;         /* threads left out (0: the whole team is trusted) */
    int judged;       /* the team size of the samples since the last judgement */
    double till;      /* end of the current stretch on fewer threads (omp_get_wtime) */
    double stretch;   /* the next such stretch, seconds (0: GC_GUARD_STRETCH) */
    double next;      /* time of the next sample outside a try */
    double start;     /* start of the current sample */
    double spent;     /* the samples' wall time, seconds */
    int64_t waited;   /* the samples' run_delay, summed over threads, nanoseconds */
    int samples;      /* samples since the last judgement */
    int64_t reduced;  /* calls that ran on fewer threads because of the guard */
} gc_guard;

/* Nanoseconds the calling thread has waited for a CPU while runnable, or -1. */
static inline int64_t gc_run_delay(void)
{
#ifdef __linux__
    char text[96];
    const int fd = open("/proc/thread-self/schedstat", O_RDONLY);
    if (fd < 0)
        return -1;
    const ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got <= 0)
        return -1;
    text[got] = '\0';
    char *end;
    strtoull(text, &end, 10); /* time on a CPU */
    if (end == text)
        return -1;
    const char *waiting = end;
    const unsigned long long delay = strtoull(waiting, &end, 10);
    return end == waiting ? -1 : (int64_t)delay;
#else
    return -1;
#endif
}

/* Whether the current call is a try: the whole team again after a stretch. */
static inline int gc_guard_trying(const gc_guard *g)
{
    return g->drop > 0 && g->team == g->asked;
}

/* Forget the samples since the last judgement. */
static inline void gc_guard_restart(gc_guard *g)
{
    g->spent = 0.0;
    g->waited = 0;
    g->samples = 0;
}

/* The team of a call of `work` flops on a model asking for `threads`: sets g->team, and
   g->sampled when this call is sampled (every call of a try, else one per
   GC_GUARD_EVERY seconds; a call on one thread has nothing to judge). */
static inline void gc_team(gc_guard *g, int threads, double work)
{
    g->sampled = 0;
    g->team = 1;
#ifdef _OPENMP
    if (threads <= 1 || work < GC_TEAM_FLOPS)
        return;
    g->team = threads;
#if GC_GUARD
    if (g->off)
        return;
    const double now = omp_get_wtime();
    if (g->drop > 0 && now < g->till) {
        g->reduced += 1;
        g->team = threads > g->drop ? threads - g->drop : 1;
    }
    g->asked = threads;
    if (g->team != g->judged) { /* a judgement weighs samples of one team size */
        g->judged = g->team;
        gc_guard_restart(g);
    }
    if (g->team > 1 && (gc_guard_trying(g) || now >= g->next)) {
        g->sampled = 1;
        g->start = now;
    }
#endif
#else
    (void)threads;
    (void)work;
#endif
}

/* Each thread of a sampled call, after its part: add its waiting since `before`. */
static inline void gc_guard_add(gc_guard *g, int64_t before)
{
    const int64_t after = gc_run_delay();
    if (before < 0 || after < 0) {
#pragma omp atomic write
        g->off = 1;
        return;
    }
#pragma omp atomic
    g->waited += after - before;
}

/* After a sampled call: count it, and judge the team every GC_GUARD_SAMPLES samples, or
   as soon as GC_GUARD_EARLY seconds of samples (GC_GUARD_EARLY_TRY in a try) show more
   than GC_GUARD_CLEAR waiting.  The whole team waiting starts a stretch on fewer threads
   (or, after a try, the next, twice as long); a smaller team still waiting during a
   stretch drops more threads; the whole team not waiting is trusted again. */
static inline void gc_guard_judge(gc_guard *g)
{
#ifdef _OPENMP
    const double now = omp_get_wtime();
    g->spent += now - g->start;
    g->samples += 1;
    g->next = now + GC_GUARD_EVERY;
    const double waiting = (double)g->waited * 1e-9 / g->spent;
    const double enough = gc_guard_trying(g) ? GC_GUARD_EARLY_TRY : GC_GUARD_EARLY;
    if (g->samples < GC_GUARD_SAMPLES && !(g->spent >= enough && waiting > GC_GUARD_CLEAR))
        return;
    if (g->stretch <= 0.0)
        g->stretch = GC_GUARD_STRETCH;
    const int more = waiting < 1.5 ? 1 : (int)(waiting + 0.5);
    if (waiting > GC_GUARD_WAIT && g->team == g->asked) {
        g->drop = more;
        if (g->asked - g->drop > omp_get_num_procs())
            g->drop = g->asked - omp_get_num_procs();
        g->till = now + g->stretch;
        g->stretch = fmin(2.0 * g->stretch, GC_GUARD_STRETCH_MAX);
    } else if (waiting > GC_GUARD_WAIT) {
        g->drop = g->drop + more < g->asked ? g->drop + more : g->asked - 1;
    } else if (g->team == g->asked) {
        g->drop = 0;
        g->stretch = GC_GUARD_STRETCH;
    }
    gc_guard_restart(g);
#else
    (void)g;
#endif
}

#endif /* GC_TEAM_H */
