package dev.optsidecar.server.engine.kernel;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The reductions and data kernels around a step against their references: gradient ingest (the
 * first non-finite element exactly; the sum of squares within the catalogue's bound, since its
 * summation order is the engine's), sync-mode combination (the same bits) and the update norm.
 */
class GradientKernelsTest {
    /** The catalogue's bound on a sum of squares in double whose order an engine chooses. */
    private static final double SUM_RELATIVE_BOUND = 1e-12;
    private static final int N = 5003;

    @Test
    void ingestFindsTheFirstNonFiniteAndSumsSquares() {
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            EngineTensor t = engine.allocate(N, 0);
            float[] g = TestData.random(N, 7);
            Ingest in = t.writeGradient(0, TestData.le(g));
            assertEquals(-1, in.firstNonFinite());
            double expected = ReferenceKernels.sumOfSquares(g);
            assertEquals(expected, in.sumOfSquares(), expected * SUM_RELATIVE_BOUND);
            g[4000] = Float.NEGATIVE_INFINITY;
            g[4500] = Float.NaN;
            assertEquals(ReferenceKernels.firstNonFinite(g), t.writeGradient(0, TestData.le(g)).firstNonFinite());
        }
    }

    @Test
    void combinationIsTheReferenceBitForBit() {
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            EngineTensor t = engine.allocate(N, 0);
            List<float[]> parts = new ArrayList<>();
            int[] handles = new int[3];
            for (int i = 0; i < handles.length; i++) {
                parts.add(TestData.random(N, 20 + i));
                handles[i] = t.newGradientBuffer();
                t.writeGradient(handles[i], 0, TestData.le(parts.get(i)));
            }
            for (float divisor : new float[] {1f, 3f}) {
                double squares = t.combineGradients(handles, divisor);
                float[] expected = ReferenceKernels.combine(parts, divisor);
                float[] actual = new float[N];
                java.nio.ByteBuffer b = java.nio.ByteBuffer.allocate(N * 4).order(java.nio.ByteOrder.LITTLE_ENDIAN);
                t.readGradient(0, N, b);
                b.flip().asFloatBuffer().get(actual);
                KernelConformanceTest.assertSameBits(expected, actual, "combined gradient / " + divisor);
                double expectedSquares = ReferenceKernels.sumOfSquares(expected);
                assertEquals(expectedSquares, squares, expectedSquares * SUM_RELATIVE_BOUND);
            }
        }
    }

    @Test
    void updateSquaresMeasureWhatTheProgramChanged() {
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            EngineTensor t = engine.allocate(40_000, 1);
            float[] before = TestData.random(40_000, 3);
            t.writeParams(0, TestData.le(before));
            t.writeGradient(0, TestData.le(TestData.random(40_000, 4)));
            KernelCall sgd = Kernel.SGD_MOMENTUM.call().scalar("grad_scale", 1f).scalar("weight_decay", 0f)
                    .scalar("neg_lr", -0.1f).scalar("momentum", 0.9f).scalar("one_minus_dampening", 1f)
                    .flag("coupled_weight_decay", false).flag("first_step", true).flag("nesterov", false)
                    .slots(0).build();
            double squares = engine.runMeasuringUpdate(List.of(new TensorProgram(t, List.of(sgd))));
            double expected = ReferenceKernels.updateSquares(before, TestData.params(t));
            assertEquals(expected, squares, expected * SUM_RELATIVE_BOUND);
        }
    }
}
