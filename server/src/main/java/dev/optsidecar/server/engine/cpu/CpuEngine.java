package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.SegmentStepper;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.ViewChunks;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.DoubleAdder;

/**
 * The CPU engine: tensors are float[] blocks, and each tensor's program of kernel calls is bound
 * to Java loops ({@link CpuKernels}) and run as one pass over block ranges. Large tensors are cut into ranges spread over a small fixed pool (the
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

    /**
     * How the tensor-wide loops outside the kernels (the gradient's sum of squares, the 16-bit
     * conversions) run here: native, or in Java and why; and whether steps over a sealed segment
     * can run in place. For the start-up log.
     */
    public static String bulkLoops() {
        if (!BulkLoops.NATIVE) {
            return "Java bulk loops (" + NativeLoops.UNAVAILABLE + ")";
        }
        return SegmentStepKernel.VECTORISED ? "native bulk loops, in-place segment steps" : "native bulk loops";
    }

    /** @throws ArithmeticException when the bytes do not fit a long */
    static long bytes(long numel, int slots) {
        return Math.multiplyExact(Math.multiplyExact(numel, (long) Float.BYTES), 2L + slots);
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
    public SegmentStepper segmentStepper() {
        return SegmentStepKernel.VECTORISED ? SEGMENT_STEPPER : null;
    }

    private static final SegmentStepper SEGMENT_STEPPER = new CpuSegmentStepper();

    @Override
    public int threads() {
        return threads;
    }

    @Override
    public void run(List<TensorProgram> programs) {
        runLoops(programs, null);
    }

    @Override
    public double runMeasuringUpdate(List<TensorProgram> programs) {
        DoubleAdder squares = new DoubleAdder();
        runLoops(programs, squares);
        return squares.sum();
    }

    private void runLoops(List<TensorProgram> programs, DoubleAdder updateSquares) {
        List<CpuTensor> tensors = new ArrayList<>(programs.size());
        List<BlockLoop> loops = new ArrayList<>(programs.size());
        List<ViewChunks> weightsOut = new ArrayList<>(programs.size());
        CpuKernels.Binder binder = new CpuKernels.Binder();
        for (TensorProgram program : programs) {
            BlockLoop loop = binder.program(program.calls());
            tensors.add((CpuTensor) program.tensor());
            loops.add(updateSquares == null ? loop : new UpdateNorm(loop, updateSquares));
            weightsOut.add(program.weightsOut());
        }
        apply(tensors, loops, weightsOut);
    }

    @Override
    public boolean writesWeightChunks() {
        return true;
    }

    /**
     * Runs a raw loop over tensors, split into ranges as programs are; for benchmarks that compare
     * a kernel with a memory pass over the same arrays.
     */
    public void runLoop(List<EngineTensor> tensors, BlockLoop loop) {
        apply(tensors.stream().map(CpuTensor.class::cast).toList(), java.util.Collections.nCopies(tensors.size(), loop),
                java.util.Collections.nCopies(tensors.size(), null));
    }

    private void apply(List<CpuTensor> tensors, List<BlockLoop> loops, List<ViewChunks> weightsOut) {
        long total = 0;
        for (CpuTensor t : tensors) {
            total += t.numel();
        }
        long rangeLength = Math.max(MIN_TASK, (total + (long) threads * RANGES_PER_THREAD - 1)
                / ((long) threads * RANGES_PER_THREAD));
        List<Range> ranges = new ArrayList<>();
        for (int i = 0; i < tensors.size(); i++) {
            split(tensors.get(i), loops.get(i), weightsOut.get(i), (int) Math.min(rangeLength, blockSize), ranges);
        }
        if (pool == null || total < 2L * MIN_TASK || ranges.size() == 1) {
            for (Range r : ranges) {
                r.run();
            }
            return;
        }
        runShared(ranges);
    }

    /**
     * Cuts one tensor into ranges of at most {@code length} elements that never cross a block;
     * with {@code weightsOut}, each tile's new θ is written there right after its step.
     */
    private static void split(CpuTensor t, BlockLoop step, ViewChunks weightsOut, int length, List<Range> out) {
        for (int b = 0; b < t.blockCount(); b++) {
            int n = t.blockLength(b);
            BlockLoop loop = weightsOut == null ? step : Chain.of(List.of(step, new WeightsOut(weightsOut, t.blockStart(b))));
            for (int from = 0; from < n; from += length) {
                out.add(new Range(t, b, from, Math.min(n, from + length), loop));
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

    private record Range(CpuTensor tensor, int block, int from, int to, BlockLoop step) {
        void run() {
            step.apply(tensor.paramBlock(block), tensor.gradBlock(block), tensor.stateBlock(block), from, to);
        }
    }
}
