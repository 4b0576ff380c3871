package dev.optsidecar.server.engine;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The wire conversions against {@link HalfFloatReference}: every 16-bit pattern widens to its exact
 * value, and narrowing rounds edge and random float32 values as IEEE 754 does.
 */
class HalfFloatsTest {
    private static WireType wireOf(HalfFloatReference format) {
        return format == HalfFloatReference.BFLOAT16 ? WireType.BFLOAT16 : WireType.FLOAT16;
    }

    @ParameterizedTest
    @EnumSource(HalfFloatReference.class)
    void everyPatternWidensToItsExactValue(HalfFloatReference format) {
        WireType wire = wireOf(format);
        for (int bits = 0; bits < 1 << 16; bits++) {
            float widened = wire.widen((short) bits);
            double expected = format.value(bits);
            String what = format + " pattern 0x" + Integer.toHexString(bits);
            if (Double.isNaN(expected)) {
                assertTrue(Float.isNaN(widened), what + " is a NaN");
                assertEquals(bits >>> 15, Float.floatToRawIntBits(widened) >>> 31, what + ": sign kept");
            } else {
                assertEquals(Double.doubleToRawLongBits(expected), Double.doubleToRawLongBits(widened), what);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(HalfFloatReference.class)
    void edgeValuesRoundToNearestEven(HalfFloatReference format) {
        WireType wire = wireOf(format);
        for (float x : edgeValues(format)) {
            assertEquals(format.round(x), wire.narrow(x) & 0xffff,
                    () -> format + " of " + x + " (0x" + Integer.toHexString(Float.floatToRawIntBits(x)) + ")");
        }
    }

    @ParameterizedTest
    @EnumSource(HalfFloatReference.class)
    void randomValuesRoundToNearestEven(HalfFloatReference format) {
        WireType wire = wireOf(format);
        SplittableRandom random = new SplittableRandom(11);
        for (int i = 0; i < 300_000; i++) {
            // Half of any bit pattern; half inside the format's range, where the rounding is decided.
            float x = i % 2 == 0 ? Float.intBitsToFloat(random.nextInt())
                    : (float) (random.nextDouble(-1, 1) * Math.scalb(1.0, random.nextInt(-30, 20)));
            if (Float.isNaN(x)) {
                continue;
            }
            assertEquals(format.round(x), wire.narrow(x) & 0xffff, "of " + x);
        }
    }

    /** Values whose rounding is easy to get wrong: ties, both sides of ties, subnormals, the range's ends. */
    private static List<Float> edgeValues(HalfFloatReference format) {
        List<Float> around = new ArrayList<>();
        int inf = format.infinityBits();
        int[] patterns = {0, 1, 2, 3, 0x3ff, 0x400, 0x401, 0x7f, 0x80, 0x81, inf - 1, inf - 2, 0x3c00, 0x3f80};
        for (int p : patterns) {
            double v = format.value(p);
            double next = format.value(p + 1 <= inf ? p + 1 : p);
            // Reading +Inf's pattern with an unbounded exponent gives the overflow tie.
            double nextFinite = p + 1 == inf ? 2 * format.value(p) - format.value(p - 1) : next;
            double tie = (v + nextFinite) / 2;
            for (double d : new double[] {v, tie, nextFinite}) {
                float f = (float) d;
                if (Float.isFinite(f)) {
                    for (float g : new float[] {f, Math.nextUp(f), Math.nextDown(f)}) {
                        around.add(g);
                        around.add(-g);
                    }
                }
            }
        }
        for (float f : new float[] {0f, -0f, Float.MIN_VALUE, Float.MIN_NORMAL, Float.MAX_VALUE, 1f, 65504f,
                65519.996f, 65520f, 0x1p-24f, 0x1p-25f, 0x1.8p-24f, 0x1p-14f, Float.POSITIVE_INFINITY,
                0x1.01p0f, 0x1.03p0f, 0x1.002p0f, 0x1.006p0f}) {
            around.add(f);
            around.add(-f);
        }
        return around;
    }

    @Test
    void knownValuesHaveTheirStandardEncodings() {
        assertEquals(0x3f80, HalfFloats.floatToBfloat16(1f) & 0xffff);
        assertEquals(0x3c00, HalfFloats.floatToFloat16(1f) & 0xffff);
        assertEquals(0x7bff, HalfFloats.floatToFloat16(65504f) & 0xffff, "float16's largest finite value");
        assertEquals(0x7c00, HalfFloats.floatToFloat16(65520f) & 0xffff, "the overflow tie rounds to Inf");
        assertEquals(0xfc00, HalfFloats.floatToFloat16(-1e6f) & 0xffff);
        assertEquals(0x0001, HalfFloats.floatToFloat16(0x1p-24f) & 0xffff, "the smallest subnormal");
        assertEquals(0x0000, HalfFloats.floatToFloat16(0x1p-25f) & 0xffff, "a tie with zero rounds to even zero");
        assertEquals(0x0002, HalfFloats.floatToFloat16(0x1.8p-24f) & 0xffff, "1.5 units round to even 2");
        assertEquals(0x8000, HalfFloats.floatToFloat16(-0f) & 0xffff);
        assertEquals(0x7f80, HalfFloats.floatToBfloat16(Float.MAX_VALUE) & 0xffff, "past bfloat16's range: Inf");
        assertEquals(0x3f80, HalfFloats.floatToBfloat16(0x1.01p0f) & 0xffff, "a tie rounds to the even 1");
        assertEquals(0x3f82, HalfFloats.floatToBfloat16(0x1.03p0f) & 0xffff, "a tie rounds to the even 1+2^-6");
    }

    @Test
    void nanStaysNan() {
        for (int bits : new int[] {0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7f801000}) {
            float nan = Float.intBitsToFloat(bits);
            short b = HalfFloats.floatToBfloat16(nan);
            short h = HalfFloats.floatToFloat16(nan);
            assertTrue(Double.isNaN(HalfFloatReference.BFLOAT16.value(b & 0xffff)), "bfloat16 of 0x" + Integer.toHexString(bits));
            assertTrue(Double.isNaN(HalfFloatReference.FLOAT16.value(h & 0xffff)), "float16 of 0x" + Integer.toHexString(bits));
            assertEquals(bits >>> 31, (b & 0xffff) >>> 15, "bfloat16 sign");
            assertEquals(bits >>> 31, (h & 0xffff) >>> 15, "float16 sign");
        }
    }
}
