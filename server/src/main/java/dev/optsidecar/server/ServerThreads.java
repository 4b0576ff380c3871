package dev.optsidecar.server;

import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;

/**
 * The background threads of one server, made when it starts and stopped when it closes, so that
 * none outlives it. Each executor starts its threads on first use.
 */
final class ServerThreads implements AutoCloseable {
    /** How long closing waits for a thread to finish what it is doing. */
    private static final long STOP_SECONDS = 5;

    /** Sync steps' straggler timeouts and idle Step streams' checks. */
    final ScheduledExecutorService timers = timers();
    /** What follows a sync step's completion, and detaching trainers: away from threads that hold a model's lock. */
    final ExecutorService completions = Executors.newCachedThreadPool(named("optsidecar-step-completions"));
    /** Snapshots taken in the background: every N steps, every T seconds, when a journal outgrows its snapshot. */
    final ScheduledExecutorService snapshots = Executors.newSingleThreadScheduledExecutor(named("optsidecar-snapshots"));

    /** Cancelled checks leave the queue at once: each closed stream cancels one, and must not stay referenced. */
    private static ScheduledExecutorService timers() {
        ScheduledThreadPoolExecutor timers = new ScheduledThreadPoolExecutor(1, named("optsidecar-sync-timeouts"));
        timers.setRemoveOnCancelPolicy(true);
        return timers;
    }

    private static ThreadFactory named(String name) {
        return r -> {
            Thread t = new Thread(r, name);
            t.setDaemon(true);
            return t;
        };
    }

    /**
     * Stops every thread and waits for them to end. Timers and snapshots stop at once; completions
     * already handed over (a trainer detaching) still run.
     */
    @Override
    public void close() {
        timers.shutdownNow();
        snapshots.shutdownNow();
        completions.shutdown();
        for (ExecutorService e : List.of(timers, snapshots, completions)) {
            try {
                if (!e.awaitTermination(STOP_SECONDS, TimeUnit.SECONDS)) {
                    e.shutdownNow();
                    e.awaitTermination(STOP_SECONDS, TimeUnit.SECONDS);
                }
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
                e.shutdownNow();
            }
        }
    }
}
