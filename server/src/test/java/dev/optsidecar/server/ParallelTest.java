package dev.optsidecar.server;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicIntegerArray;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ParallelTest {
    @Test
    void everyIndexRunsOnceOnTheCallerAndTheGivenExecutorsThreads() throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(3, r -> new Thread(r, "parallel-test-helper"));
        try {
            AtomicIntegerArray runs = new AtomicIntegerArray(1000);
            Set<String> threads = ConcurrentHashMap.newKeySet();
            Parallel.forEach(runs.length(), 4, pool, i -> {
                runs.incrementAndGet(i);
                threads.add(Thread.currentThread().getName());
            });
            for (int i = 0; i < runs.length(); i++) {
                assertEquals(1, runs.get(i), "index " + i);
            }
            threads.remove(Thread.currentThread().getName());
            assertTrue(threads.stream().allMatch("parallel-test-helper"::equals), "helpers came from elsewhere: " + threads);
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    @Timeout(20)
    void aHelperStuckBehindOtherWorkIsNotWaitedFor() throws Exception {
        ExecutorService pool = Executors.newSingleThreadExecutor();
        CountDownLatch release = new CountDownLatch(1);
        try {
            pool.execute(() -> {
                try {
                    release.await(); // the pool's only thread is busy until the test ends
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            AtomicIntegerArray runs = new AtomicIntegerArray(100);
            Parallel.forEach(runs.length(), 2, pool, runs::incrementAndGet);
            for (int i = 0; i < runs.length(); i++) {
                assertEquals(1, runs.get(i), "index " + i);
            }
        } finally {
            release.countDown();
            pool.shutdown();
            assertTrue(pool.awaitTermination(10, TimeUnit.SECONDS));
        }
    }

    @Test
    void theFirstFailureIsThrownOnceEveryThreadHasStopped() {
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            IllegalStateException boom = new IllegalStateException("index 7");
            IllegalStateException thrown = assertThrows(IllegalStateException.class,
                    () -> Parallel.forEach(50, 3, pool, i -> {
                        if (i == 7) {
                            throw boom;
                        }
                    }));
            assertSame(boom, thrown);
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void aRejectingExecutorLeavesTheWorkToTheCaller() {
        AtomicIntegerArray runs = new AtomicIntegerArray(30);
        Parallel.forEach(runs.length(), 3, task -> {
            throw new java.util.concurrent.RejectedExecutionException("shut down");
        }, runs::incrementAndGet);
        for (int i = 0; i < runs.length(); i++) {
            assertEquals(1, runs.get(i), "index " + i);
        }
    }
}
