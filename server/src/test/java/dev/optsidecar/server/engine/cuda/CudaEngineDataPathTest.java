package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.HalfFloats;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.engine.kernel.ReferenceKernels;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The CUDA engine's data path on the emulated device: bytes in and out through the pinned ring in
 * chunks (ranges longer than a staging buffer, offsets inside a tensor, 16-bit wires), gradient
 * ingest against the CPU engine's (the same first non-finite index and the same sum, to the bit),
 * trainers' buffers (swap, combine), the update norm, and running out of device memory.
 */
class CudaEngineDataPathTest {
    /** More than two staging buffers' worth of floats, and odd. */
    private static final int LONG = 2 * CudaEngine.STAGING_BYTES / Float.BYTES + 12_345;
    private static CudaEngine engine;

    @BeforeAll
    static void open() throws Exception {
        engine = EmulatedCuda.open(1L << 30);
    }

    @AfterAll
    static void close() {
        engine.close();
    }

    @Test
    void reportsItselfAsCuda() {
        assertEquals("cuda", engine.name());
        assertTrue(engine.device().startsWith("CPU emulation (device 0"), engine.device());
    }

    @Test
    void longRangesAndOffsetsRoundTripThroughTheStagingRing() {
        EngineTensor t = engine.allocate(LONG, 1);
        try {
            float[] theta = TestData.random(LONG, 5);
            t.writeParams(0, TestData.le(theta));
            assertArrayEquals(theta, TestData.params(t));
            float[] part = TestData.random(1_500_000, 6);
            t.writeSlot(0, 777, TestData.le(part));
            ByteBuffer b = ByteBuffer.allocate(part.length * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            t.readSlot(0, 777, part.length, b);
            float[] back = new float[part.length];
            b.flip().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(back);
            assertArrayEquals(part, back);
            for (WireType wire : List.of(WireType.BFLOAT16, WireType.FLOAT16)) {
                ByteBuffer narrow = ByteBuffer.allocate(LONG * 2).order(ByteOrder.LITTLE_ENDIAN);
                t.readParams(0, LONG, narrow, wire);
                assertEquals(LONG * 2, narrow.position());
                for (int i = 0; i < LONG; i += 997) {
                    assertEquals(wire.narrow(theta[i]), narrow.getShort(i * 2), wire + " element " + i);
                }
            }
            assertThrows(IndexOutOfBoundsException.class, () -> t.readParams(LONG - 1, 2,
                    ByteBuffer.allocate(8)));
        } finally {
            t.free();
        }
    }

    @Test
    void ingestIsTheCpuEnginesToTheBit() {
        try (CpuEngine cpu = new CpuEngine(1)) {
            EngineTensor gpu = engine.allocate(LONG, 0);
            EngineTensor host = cpu.allocate(LONG, 0);
            try {
                float[] g = TestData.random(LONG, 8);
                for (int h = 0; h < 2; h++) {
                    int gh = gpu.newGradientBuffer();
                    int ch = host.newGradientBuffer();
                    Ingest a = gpu.writeGradient(gh, 0, TestData.le(g));
                    Ingest b = host.writeGradient(ch, 0, TestData.le(g));
                    assertEquals(b, a);
                    g[LONG - 3] = Float.NaN;
                    g[LONG - 2] = Float.POSITIVE_INFINITY;
                }
                assertEquals(LONG - 3, gpu.writeGradient(0, TestData.le(g)).firstNonFinite());
                // 16-bit wires: widened in the copy, the same ingest as the CPU engine's.
                ByteBuffer halves = ByteBuffer.allocate(20_001 * 2).order(ByteOrder.LITTLE_ENDIAN);
                for (int i = 0; i < 20_001; i++) {
                    halves.putShort(HalfFloats.floatToFloat16(g[i]));
                }
                int gh = gpu.newGradientBuffer();
                int ch = host.newGradientBuffer();
                assertEquals(host.writeGradient(ch, 100, halves.flip(), WireType.FLOAT16),
                        gpu.writeGradient(gh, 100, halves.duplicate(), WireType.FLOAT16));
                ByteBuffer x = ByteBuffer.allocate(20_001 * 4);
                ByteBuffer y = ByteBuffer.allocate(20_001 * 4);
                gpu.readGradient(gh, 100, 20_001, x);
                host.readGradient(ch, 100, 20_001, y);
                assertEquals(-1, x.flip().mismatch(y.flip()));
            } finally {
                gpu.free();
                host.free();
            }
        }
    }

    @Test
    void trainersBuffersSwapAndCombineAsTheReference() {
        int n = 5003;
        EngineTensor t = engine.allocate(n, 0);
        try {
            List<float[]> parts = new ArrayList<>();
            int[] handles = new int[3];
            for (int i = 0; i < handles.length; i++) {
                parts.add(TestData.random(n, 20 + i));
                handles[i] = t.newGradientBuffer();
                t.writeGradient(handles[i], 0, TestData.le(parts.get(i)));
            }
            for (float divisor : new float[] {1f, 3f}) {
                double squares = t.combineGradients(handles, divisor);
                float[] expected = ReferenceKernels.combine(parts, divisor);
                assertArrayEquals(expected, gradient(t, n));
                double reference = ReferenceKernels.sumOfSquares(expected);
                assertEquals(reference, squares, reference * 1e-12);
            }
            t.useGradient(handles[1]);
            assertArrayEquals(parts.get(1), gradient(t, n));
            t.freeGradientBuffer(handles[0]);
            assertThrows(IllegalArgumentException.class, () -> t.useGradient(handles[0]));
            assertEquals(handles[0], t.newGradientBuffer(), "a freed handle is reused");
        } finally {
            t.free();
        }
    }

    @Test
    void updateNormIsTheReferenceWithinTheBoundAndTheSameRunToRun() {
        int n = 300_007;
        float[] theta = TestData.random(n, 1);
        float[] grad = TestData.random(n, 2);
        KernelCall sgd = Kernel.SGD.call().scalar("grad_scale", 1f).scalar("weight_decay", 0f)
                .scalar("neg_lr", -0.1f).flag("coupled_weight_decay", false).build();
        double[] measured = new double[2];
        for (int run = 0; run < 2; run++) {
            EngineTensor t = engine.allocate(n, 0);
            try {
                t.writeParams(0, TestData.le(theta));
                t.writeGradient(0, TestData.le(grad));
                measured[run] = engine.runMeasuringUpdate(List.of(new TensorProgram(t, List.of(sgd))));
            } finally {
                t.free();
            }
        }
        float[] after = theta.clone();
        ReferenceKernels.step(sgd, after, grad, new float[0][]);
        double reference = ReferenceKernels.updateSquares(theta, after);
        assertEquals(reference, measured[0], reference * 1e-12);
        assertEquals(Double.doubleToLongBits(measured[0]), Double.doubleToLongBits(measured[1]));
    }

    @Test
    void runningOutOfDeviceMemoryIsAnOutOfMemoryErrorThatLeavesNothingAllocated() {
        long free = engine.freeBytes();
        long tooMany = free / Float.BYTES / 3 + 1; // θ and g fit, the slot does not
        OutOfMemoryError e = assertThrows(OutOfMemoryError.class, () -> engine.allocate(tooMany, 1));
        assertTrue(e.getMessage().contains("out of GPU memory"), e.getMessage());
        assertEquals(free, engine.freeBytes());
        EngineTensor t = engine.allocate(1000, 1);
        t.free();
        assertEquals(free, engine.freeBytes());
    }

    private static float[] gradient(EngineTensor t, int n) {
        ByteBuffer b = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        t.readGradient(0, n, b);
        float[] v = new float[n];
        b.flip().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(v);
        return v;
    }
}
