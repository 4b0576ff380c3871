package dev.optsidecar.server.bench;

import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.cpu.CpuEngine;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.SplittableRandom;

/**
 * One engine tensor (parameters, gradient and state slots) with random parameters and gradient,
 * and the step that a benchmark applies to it over and over.
 */
final class BenchTensor implements AutoCloseable {
    private final CpuEngine engine;
    private final EngineTensor tensor;
    private final Step steps;
    private long t;

    /** What a benchmark step runs on the tensor at its step t. */
    @FunctionalInterface
    interface Step {
        void run(CpuEngine engine, EngineTensor tensor, long t);
    }

    /**
     * @param firstStep the tensor's step count t at the first {@link #timeStep}
     * @param steps     the step for a tensor at its step t
     */
    BenchTensor(CpuEngine engine, long numel, int slots, long firstStep, Step steps, long seed) {
        this.engine = engine;
        this.tensor = engine.allocate(numel, slots);
        this.steps = steps;
        this.t = firstStep - 1;
        fillRandom(tensor, numel, seed);
    }

    /** Applies the next step and returns how long it took, in milliseconds. */
    double timeStep() {
        long at = ++t;
        long start = System.nanoTime();
        steps.run(engine, tensor, at);
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
