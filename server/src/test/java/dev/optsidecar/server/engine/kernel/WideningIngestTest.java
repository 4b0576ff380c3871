package dev.optsidecar.server.engine.kernel;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.HalfFloatReference;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The 16-bit data kernels: ingest of bfloat16 or float16 elements is the float32 ingest of their
 * exact values (the same buffer bits, the same first non-finite index and the same sum of squares
 * to the bit), and reading out rounds each float32 value to nearest even.
 */
class WideningIngestTest {
    private static final int N = 5003; // several blocks of 1024 and a short one

    private static HalfFloatReference reference(WireType wire) {
        return wire == WireType.BFLOAT16 ? HalfFloatReference.BFLOAT16 : HalfFloatReference.FLOAT16;
    }

    /** Random values as 16-bit patterns, and those patterns' exact values. */
    private static ByteBuffer patterns(WireType wire, float[] values, float[] exact) {
        HalfFloatReference format = reference(wire);
        ByteBuffer bytes = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < values.length; i++) {
            int bits = format.round(values[i]);
            bytes.putShort((short) bits);
            exact[i] = (float) format.value(bits);
        }
        return bytes.flip();
    }

    @ParameterizedTest
    @EnumSource(value = WireType.class, names = {"BFLOAT16", "FLOAT16"})
    void ingestIsTheFloat32IngestOfTheExactValues(WireType wire) {
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            EngineTensor t = engine.allocate(N, 0);
            int narrow = t.newGradientBuffer();
            int wide = t.newGradientBuffer();
            float[] exact = new float[N];
            ByteBuffer sent = patterns(wire, TestData.random(N, 5), exact);
            // Offset 700 puts the chunk across block boundaries at a different phase.
            Ingest in = t.writeGradient(narrow, 700, sent.duplicate().limit(2 * (N - 700)), wire);
            Ingest reference = t.writeGradient(wide, 700, floats(exact, 0, N - 700));
            assertEquals(-1, in.firstNonFinite());
            assertEquals(Double.doubleToRawLongBits(reference.sumOfSquares()), Double.doubleToRawLongBits(in.sumOfSquares()));
            KernelConformanceTest.assertSameBits(read(t, wide), read(t, narrow), wire + " ingest");

            ByteBuffer withNan = sent.duplicate().order(ByteOrder.LITTLE_ENDIAN);
            int nanBits = wire == WireType.BFLOAT16 ? 0xffc1 : 0x7c00; // a NaN; float16's +Inf
            withNan.putShort(2 * 3100, (short) nanBits);
            withNan.putShort(2 * 4000, (short) nanBits);
            assertEquals(3100, t.writeGradient(narrow, 0, withNan, wire).firstNonFinite());
        }
    }

    @ParameterizedTest
    @EnumSource(value = WireType.class, names = {"BFLOAT16", "FLOAT16"})
    void readingOutRoundsEachValue(WireType wire) {
        try (CpuEngine engine = new CpuEngine(2, 1 << 10)) {
            EngineTensor t = engine.allocate(N, 0);
            float[] params = TestData.random(N, 9);
            params[17] = 1e9f; // float16: Inf
            params[18] = 3e-8f; // float16: a subnormal
            t.writeParams(0, TestData.le(params));
            ByteBuffer out = ByteBuffer.allocate(2 * (N - 300)).order(ByteOrder.LITTLE_ENDIAN);
            t.readParams(300, N - 300, out, wire);
            assertEquals(out.capacity(), out.position(), "the buffer advanced past what was written");
            out.flip();
            for (int i = 300; i < N; i++) {
                assertEquals(reference(wire).round(params[i]), out.getShort() & 0xffff, "element " + i);
            }
        }
    }

    private static ByteBuffer floats(float[] v, int from, int count) {
        ByteBuffer b = ByteBuffer.allocate(count * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(v, from, count);
        return b;
    }

    private static float[] read(EngineTensor t, int handle) {
        ByteBuffer b = ByteBuffer.allocate(N * 4).order(ByteOrder.LITTLE_ENDIAN);
        t.readGradient(handle, 0, N, b);
        float[] out = new float[N];
        b.flip().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }
}
