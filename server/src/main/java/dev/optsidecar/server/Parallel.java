package dev.optsidecar.server;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executor;
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
     * failure, if any (the indexes not yet taken by then are skipped).
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
        int others = Math.max(0, Math.min(threads, n) - 1);
        CompletableFuture<?>[] running = new CompletableFuture<?>[others];
        for (int h = 0; h < others; h++) {
            running[h] = CompletableFuture.runAsync(worker, helpers);
        }
        worker.run();
        CompletableFuture.allOf(running).join(); // the workers catch their own failures
        Throwable first = failure.get();
        if (first instanceof Error e) {
            throw e;
        }
        if (first != null) {
            throw (RuntimeException) first;
        }
    }
}
