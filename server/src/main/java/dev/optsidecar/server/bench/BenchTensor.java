package dev.optsidecar.server.bench;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.FusedStep;
import dev.optsidecar.server.engine.TensorStep;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.GroupCounters;
import dev.optsidecar.server.optim.Hyperparameters;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.LongFunction;

/**
 * One engine tensor (parameters, gradient and two state slots) with random parameters and gradient,
 * and the step that a benchmark applies to it over and over.
 */
final class BenchTensor implements AutoCloseable {
    /** Bytes one step moves per element: reads p, g, m, v and writes p, m, v. */
    static final int BYTES_PER_ELEMENT = 7 * Float.BYTES;
    /** Heap one tensor takes per element: p, g, m, v. */
    static final int HEAP_PER_ELEMENT = 4 * Float.BYTES;

    private final Engine engine;
    private final EngineTensor tensor;
    private final LongFunction<FusedStep> steps;
    private long t;

    private BenchTensor(Engine engine, long numel, long firstStep, LongFunction<FusedStep> steps, long seed) {
        this.engine = engine;
        this.tensor = engine.allocate(numel, 2);
        this.steps = steps;
        this.t = firstStep - 1;
        fillRandom(tensor, numel, seed);
    }

    /**
     * RAdam with its defaults, through the same public API the server uses. Counting starts at step 6,
     * the first with ρt > 5 for β2 = 0.999, so every step takes the rectified path (sqrt and divide).
     */
    static BenchTensor radam(Engine engine, long numel) {
        AlgorithmDefinition def = Algorithms.byName("RAdam", "bench");
        Algorithm algorithm = def.create(Hyperparameters.merge(def, Map.of()));
        return new BenchTensor(engine, numel, 6,
                t -> algorithm.plan(GroupCounters.INITIAL, 1e-3, 1f).forTensor().apply(t), 1);
    }

    /**
     * The memory-pass ceiling: the same reads and writes as an Adam-family step with trivial
     * arithmetic, run by the same engine so the work is split exactly as RAdam's is. Each store
     * depends on the loaded values so the JIT can drop neither.
     */
    static BenchTensor ceiling(Engine engine, long numel) {
        float k = 1e-3f;
        FusedStep pass = (p, g, s, from, to) -> {
            float[] m = s[0];
            float[] v = s[1];
            for (int i = from; i < to; i++) {
                float gi = g[i] * k;
                p[i] += gi;
                m[i] += gi;
                v[i] += gi * gi;
            }
        };
        return new BenchTensor(engine, numel, 1, t -> pass, 2);
    }

    /**
     * Runs both kernels on a small tensor until the JIT has fully compiled them. The measured sizes
     * alone call a kernel too few times for that, so the first of them would time partly compiled
     * code, with the compiler threads competing with the engine for the CPUs.
     */
    static void warmUpJit(Engine engine) {
        try (BenchTensor radam = radam(engine, 1 << 16); BenchTensor ceiling = ceiling(engine, 1 << 16)) {
            for (int i = 0; i < 2000; i++) {
                radam.timeStep();
                ceiling.timeStep();
            }
        }
    }

    /** Applies the next step and returns how long it took, in milliseconds. */
    double timeStep() {
        List<TensorStep> step = List.of(new TensorStep(tensor, steps.apply(++t)));
        long start = System.nanoTime();
        engine.apply(step);
        return (System.nanoTime() - start) / 1e6;
    }

    @Override
    public void close() {
        tensor.free();
    }

    /** Fills a float[] with small uniform values in [-0.01, 0.01), like gradients of a real model. */
    static void fillRandom(float[] values, long seed) {
        SplittableRandom random = new SplittableRandom(seed);
        for (int i = 0; i < values.length; i++) {
            values[i] = (random.nextFloat() - 0.5f) * 0.02f;
        }
    }

    private static void fillRandom(EngineTensor tensor, long numel, long seed) {
        float[] values = new float[1 << 20];
        ByteBuffer bytes = ByteBuffer.allocate(values.length * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (long offset = 0; offset < numel; offset += values.length) {
            int count = (int) Math.min(values.length, numel - offset);
            tensor.writeParams(offset, randomBytes(values, count, bytes, seed * 31 + offset));
            tensor.writeGradient(offset, randomBytes(values, count, bytes, ~(seed * 31 + offset)));
        }
    }

    private static ByteBuffer randomBytes(float[] values, int count, ByteBuffer bytes, long seed) {
        fillRandom(values, seed);
        bytes.clear();
        bytes.asFloatBuffer().put(values, 0, count);
        return bytes.limit(count * Float.BYTES);
    }
}
