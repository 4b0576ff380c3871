package dev.optsidecar.server;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.IntConsumer;

/** Runs the indexes of a task on a few threads at once, the calling thread among them. */
public final class Parallel {
    private Parallel() {}

    /**
     * Threads for a bulk copy (gradients in, views out, narrowing to 16 bits): a copy is bound by
     * memory bandwidth, which a few cores saturate; the calling thread is one of them, the others
     * come from the common pool.
     */
    public static final int COPY_THREADS =
            Math.max(1, Math.min(4, java.util.concurrent.ForkJoinPool.getCommonPoolParallelism() + 1));

    /**
     * Runs {@code task} once for each index in [0, n), on up to {@code threads} threads: this one,
     * and others from {@code helpers}. Returns when every thread has stopped; then throws the first
     * failure, if any (the indexes not yet taken by then are skipped). A helper that has not
     * started by the time this thread runs out of indexes is not waited for: it will find none.
     *
     * <p>Helpers are handed to {@code helpers} itself: {@code CompletableFuture.runAsync} would
     * start a new thread for each instead whenever the common pool has one thread (two cores).
     */
    public static void forEach(int n, int threads, Executor helpers, IntConsumer task) {
        AtomicInteger next = new AtomicInteger();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Runnable worker = () -> {
            for (int i = next.getAndIncrement(); i < n && failure.get() == null; i = next.getAndIncrement()) {
                try {
                    task.accept(i);
                } catch (RuntimeException | Error e) { // every thread stops before anything is thrown
                    failure.compareAndSet(null, e);
                }
            }
        };
        Helper[] others = new Helper[Math.max(0, Math.min(threads, n) - 1)];
        for (int h = 0; h < others.length; h++) {
            others[h] = new Helper(worker);
            try {
                helpers.execute(others[h]);
            } catch (RejectedExecutionException e) {
                others[h].claimed.set(true); // never runs: this thread takes its share
                others[h].finished.countDown();
            }
        }
        worker.run();
        for (Helper helper : others) {
            helper.awaitIfStarted();
        }
        Throwable first = failure.get();
        if (first instanceof Error e) {
            throw e;
        }
        if (first != null) {
            throw (RuntimeException) first;
        }
    }

    /** One helper's run of the worker, unless the caller finished first and claimed it. */
    private static final class Helper implements Runnable {
        private final Runnable worker;
        final AtomicBoolean claimed = new AtomicBoolean();
        final CountDownLatch finished = new CountDownLatch(1);

        Helper(Runnable worker) {
            this.worker = worker;
        }

        @Override
        public void run() {
            if (!claimed.compareAndSet(false, true)) {
                return;
            }
            try {
                worker.run(); // catches the task's failures itself
            } finally {
                finished.countDown();
            }
        }

        void awaitIfStarted() {
            if (claimed.compareAndSet(false, true)) {
                return;
            }
            boolean interrupted = false;
            while (true) {
                try {
                    finished.await();
                    break;
                } catch (InterruptedException e) {
                    interrupted = true; // the helper is writing into buffers this caller owns: wait it out
                }
            }
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
