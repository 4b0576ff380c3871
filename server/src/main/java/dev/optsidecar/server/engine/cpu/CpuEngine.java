package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.FusedStep;
import dev.optsidecar.server.engine.TensorStep;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The CPU engine: tensors are float[] blocks, and a step is the algorithm's fused single-pass loop
 * run over block ranges. Large tensors are cut into ranges spread over a small fixed pool (the
 * calling thread works too); a tensor below {@link #MIN_TASK} elements is one range on one thread,
 * and a step whose whole work is that small runs on the caller alone.
 */
public final class CpuEngine implements Engine {
    /** Default block length: 2^24 floats (64 MiB), so no single array grows unwieldy. */
    public static final int DEFAULT_BLOCK_SIZE = 1 << 24;
    /** Below this many elements a range is not worth handing to another thread. */
    static final int MIN_TASK = 1 << 15;
    /** Ranges per thread, so that threads that finish early pick up the remainder. */
    private static final int RANGES_PER_THREAD = 4;

    private final int threads;
    private final int blockSize;
    private final ExecutorService pool;

    public CpuEngine(int threads) {
        this(threads, DEFAULT_BLOCK_SIZE);
    }

    public CpuEngine(int threads, int blockSize) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be at least 1");
        }
        this.threads = threads;
        this.blockSize = blockSize;
        AtomicInteger counter = new AtomicInteger();
        this.pool = threads == 1 ? null : Executors.newFixedThreadPool(threads - 1, r -> {
            Thread t = new Thread(r, "optsidecar-engine-" + counter.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
    }

    static long bytes(long numel, int slots) {
        return numel * Float.BYTES * (2L + slots);
    }

    @Override
    public EngineTensor allocate(long numel, int slots) {
        return new CpuTensor(numel, slots, blockSize);
    }

    @Override
    public long bytesFor(long numel, int slots) {
        return bytes(numel, slots);
    }

    @Override
    public int threads() {
        return threads;
    }

    @Override
    public void apply(List<TensorStep> steps) {
        long total = 0;
        for (TensorStep s : steps) {
            total += s.tensor().numel();
        }
        long rangeLength = Math.max(MIN_TASK, (total + (long) threads * RANGES_PER_THREAD - 1)
                / ((long) threads * RANGES_PER_THREAD));
        List<Range> ranges = new ArrayList<>();
        for (TensorStep s : steps) {
            split((CpuTensor) s.tensor(), s.step(), (int) Math.min(rangeLength, blockSize), ranges);
        }
        if (pool == null || total < 2L * MIN_TASK || ranges.size() == 1) {
            for (Range r : ranges) {
                r.run();
            }
            return;
        }
        runShared(ranges);
    }

    /** Cuts one tensor into ranges of at most {@code length} elements that never cross a block. */
    private static void split(CpuTensor t, FusedStep step, int length, List<Range> out) {
        for (int b = 0; b < t.blockCount(); b++) {
            int n = t.blockLength(b);
            for (int from = 0; from < n; from += length) {
                out.add(new Range(t, b, from, Math.min(n, from + length), step));
            }
        }
    }

    /** The pool's threads and the caller take ranges from one shared counter until none are left. */
    private void runShared(List<Range> ranges) {
        AtomicInteger next = new AtomicInteger();
        Runnable worker = () -> {
            for (int i = next.getAndIncrement(); i < ranges.size(); i = next.getAndIncrement()) {
                ranges.get(i).run();
            }
        };
        int helpers = Math.min(threads - 1, ranges.size() - 1);
        List<Future<?>> futures = new ArrayList<>(helpers);
        for (int i = 0; i < helpers; i++) {
            futures.add(pool.submit(worker));
        }
        RuntimeException failure = null;
        try {
            worker.run();
        } catch (RuntimeException e) {
            failure = e;
        }
        for (Future<?> f : futures) {
            try {
                f.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while applying a step", e);
            } catch (java.util.concurrent.ExecutionException e) {
                if (failure == null) {
                    failure = new IllegalStateException("engine worker failed", e.getCause());
                }
            }
        }
        if (failure != null) {
            throw failure;
        }
    }

    /** Stops the pool and waits for its threads to end, so none outlives the engine. */
    @Override
    public void close() {
        if (pool != null) {
            pool.shutdownNow();
            try {
                pool.awaitTermination(5, java.util.concurrent.TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private record Range(CpuTensor tensor, int block, int from, int to, FusedStep step) {
        void run() {
            step.apply(tensor.paramBlock(block), tensor.gradBlock(block), tensor.stateBlock(block), from, to);
        }
    }
}
