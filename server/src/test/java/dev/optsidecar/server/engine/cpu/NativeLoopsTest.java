package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.WireType;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** The native loops give the Java loops' bits, over every 16-bit pattern and many float32 ones. */
class NativeLoopsTest {
    @BeforeAll
    static void libraryLoaded() {
        // The build compiles the library wherever g++ is; only without it may the Java loops stand alone.
        boolean compiler = System.getenv("PATH") != null && java.util.Arrays.stream(System.getenv("PATH").split(":"))
                .anyMatch(dir -> Files.isExecutable(Path.of(dir, "g++")));
        if (compiler && System.getProperty("os.arch", "").equals("amd64")) {
            assertNull(NativeLoops.UNAVAILABLE, "the build has g++, so the native loops must load");
        }
        assumeTrue(BulkLoops.NATIVE, "native loops: " + NativeLoops.UNAVAILABLE);
    }

    /** Float32 values of every kind: zeros, subnormals, normals of every exponent, Inf, NaNs with payloads. */
    private static float[] awkwardFloats(int count, long seed) {
        Random random = new Random(seed);
        float[] values = new float[count];
        int[] specials = {0, 0x80000000, 1, 0x807fffff, 0x00800000, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000,
                0x7fc00000, 0x7f800001, 0xffc12345, 0x3f808000, 0x3f818000, 0x477fefff, 0x477ff000, 0x477ff001,
                0x387fffff, 0x38800000, 0x33000000, 0x33000001, 0x337fffff, 0x32ffffff, 0x3f7fffff, 0x7f7f8000};
        for (int i = 0; i < count; i++) {
            int bits = switch (i % 4) {
                case 0 -> specials[random.nextInt(specials.length)] + random.nextInt(3) - 1;
                case 1 -> random.nextInt();
                case 2 -> Float.floatToRawIntBits((float) random.nextGaussian() * (float) Math.pow(10, random.nextInt(20) - 10));
                default -> (random.nextInt() & 0xffff8000) | (random.nextBoolean() ? 0x8000 : 0x1000); // ties
            };
            values[i] = Float.intBitsToFloat(bits);
        }
        return values;
    }

    @Test
    void sumsOfSquaresAreTheJavaLoopsBits() {
        Random random = new Random(7);
        List<float[]> inputs = new ArrayList<>();
        float[] gradient = new float[1 << 20];
        for (int i = 0; i < gradient.length; i++) {
            gradient[i] = (float) (random.nextGaussian() * Math.exp(random.nextGaussian() * 8));
        }
        inputs.add(gradient);
        float[] finite = awkwardFloats(4099, 3);
        for (int i = 0; i < finite.length; i++) {
            if (!Float.isFinite(finite[i])) {
                finite[i] = Float.MAX_VALUE;
            }
        }
        inputs.add(finite);
        inputs.add(awkwardFloats(4099, 4));
        for (float[] a : inputs) {
            for (int trial = 0; trial < 200; trial++) {
                int from = random.nextInt(Math.min(a.length, 64));
                int to = trial == 0 ? a.length : from + random.nextInt(Math.min(a.length - from, 3000) + 1);
                double[] expected = new double[JavaLoops.SUM_LANES];
                for (int lane = 0; lane < expected.length; lane++) {
                    expected[lane] = random.nextDouble();
                }
                double[] actual = expected.clone();
                JavaLoops.addSquares(a, from, to, expected);
                NativeLoops.addSquares(a, from, to, actual);
                for (int lane = 0; lane < expected.length; lane++) {
                    if (Double.isNaN(expected[lane])) { // which NaN an add keeps is the hardware's choice
                        assertTrue(Double.isNaN(actual[lane]), "lane " + lane + " of [" + from + ", " + to + ")");
                    } else {
                        assertEquals(Double.doubleToRawLongBits(expected[lane]), Double.doubleToRawLongBits(actual[lane]),
                                "lane " + lane + " of [" + from + ", " + to + ")");
                    }
                }
            }
        }
    }

    @Test
    void copyingFromADirectBufferSumsWhatItStores() {
        Random random = new Random(5);
        float[] values = awkwardFloats(20_011, 9);
        for (int i = 0; i < values.length; i += 3) {
            values[i] = (float) random.nextGaussian();
        }
        // Unaligned on purpose: a segment's pieces start wherever its layout puts them.
        ByteBuffer source = ByteBuffer.allocateDirect(values.length * Float.BYTES + 3).order(ByteOrder.LITTLE_ENDIAN);
        source.position(3);
        source.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(values);
        for (int trial = 0; trial < 120; trial++) {
            int skip = random.nextInt(50);
            int count = trial == 0 ? values.length - skip : BulkLoops.NATIVE_MIN + random.nextInt(values.length - skip
                    - BulkLoops.NATIVE_MIN);
            int from = random.nextInt(9);
            float[] expected = new float[from + count + 4];
            float[] actual = new float[from + count + 4];
            System.arraycopy(values, skip, expected, from, count);
            double[] expectedLanes = new double[JavaLoops.SUM_LANES];
            JavaLoops.addSquares(expected, from, from + count, expectedLanes);
            double[] actualLanes = new double[JavaLoops.SUM_LANES];
            assertTrue(BulkLoops.copyAddingSquares(source.slice(), (long) skip * Float.BYTES, actual, from,
                    from + count, actualLanes));
            for (int i = 0; i < actual.length; i++) {
                assertEquals(Float.floatToRawIntBits(expected[i]), Float.floatToRawIntBits(actual[i]), "element " + i);
            }
            for (int lane = 0; lane < expectedLanes.length; lane++) {
                if (Double.isNaN(expectedLanes[lane])) {
                    assertTrue(Double.isNaN(actualLanes[lane]));
                } else {
                    assertEquals(Double.doubleToRawLongBits(expectedLanes[lane]),
                            Double.doubleToRawLongBits(actualLanes[lane]), "lane " + lane);
                }
            }
        }
        assertFalse(BulkLoops.copyAddingSquares(ByteBuffer.allocate(4096), 0, new float[1024], 0, 1024,
                new double[JavaLoops.SUM_LANES]), "a heap buffer is the caller's to copy");
    }

    @Test
    void everySixteenBitPatternWidensToTheJavaLoopsBits() {
        short[] bits = new short[(1 << 16) + 5];
        for (int i = 0; i < bits.length; i++) {
            bits[i] = (short) (i - 3);
        }
        for (boolean bfloat16 : new boolean[] {true, false}) {
            float[] expected = new float[bits.length + 9];
            float[] actual = new float[bits.length + 9];
            int at = 3;
            int from = 7;
            int end = from + (1 << 16);
            if (bfloat16) {
                JavaLoops.widenBfloat16(bits, at, expected, from, end);
            } else {
                JavaLoops.widenFloat16(bits, at, expected, from, end);
            }
            NativeLoops.widen(bfloat16, bits, at, actual, from, end);
            for (int i = 0; i < actual.length; i++) {
                assertEquals(Float.floatToRawIntBits(expected[i]), Float.floatToRawIntBits(actual[i]),
                        (bfloat16 ? "bfloat16 " : "float16 ") + "element " + i);
            }
        }
    }

    @Test
    void wideningWhileSummingGivesWhatWideningThenSummingGives() {
        Random random = new Random(13);
        short[] bits = new short[20_011];
        for (int i = 0; i < bits.length; i++) {
            bits[i] = (short) random.nextInt(); // every kind of value: NaN, Inf, subnormal, both zeros
        }
        for (boolean bfloat16 : new boolean[] {true, false}) {
            WireType wire = bfloat16 ? WireType.BFLOAT16 : WireType.FLOAT16;
            for (int trial = 0; trial < 60; trial++) {
                boolean finite = trial % 2 == 0;
                short[] source = bits.clone();
                if (finite) { // a finite sum, as most gradients have: every value kept from Inf and NaN
                    for (int i = 0; i < source.length; i++) {
                        source[i] = (short) (source[i] & (bfloat16 ? 0xbf7f : 0xbbff));
                    }
                }
                int at = random.nextInt(40);
                int count = trial == 0 ? source.length - at : BulkLoops.NATIVE_MIN
                        + random.nextInt(source.length - at - BulkLoops.NATIVE_MIN);
                int from = random.nextInt(9);
                float[] expected = new float[from + count + 3];
                float[] actual = new float[from + count + 3];
                double[] expectedLanes = new double[JavaLoops.SUM_LANES];
                double[] actualLanes = new double[JavaLoops.SUM_LANES];
                for (int lane = 0; lane < expectedLanes.length; lane++) {
                    expectedLanes[lane] = actualLanes[lane] = random.nextDouble();
                }
                if (bfloat16) {
                    JavaLoops.widenBfloat16(source, at, expected, from, from + count);
                } else {
                    JavaLoops.widenFloat16(source, at, expected, from, from + count);
                }
                JavaLoops.addSquares(expected, from, from + count, expectedLanes);
                BulkLoops.widenAddingSquares(wire, source, at, actual, from, from + count, actualLanes);
                String where = wire + ", trial " + trial;
                for (int i = 0; i < actual.length; i++) {
                    assertEquals(Float.floatToRawIntBits(expected[i]), Float.floatToRawIntBits(actual[i]),
                            where + ", element " + i);
                }
                for (int lane = 0; lane < expectedLanes.length; lane++) {
                    if (Double.isNaN(expectedLanes[lane])) {
                        assertTrue(Double.isNaN(actualLanes[lane]), where + ", lane " + lane);
                    } else {
                        assertEquals(Double.doubleToRawLongBits(expectedLanes[lane]),
                                Double.doubleToRawLongBits(actualLanes[lane]), where + ", lane " + lane);
                    }
                }
            }
        }
    }

    @Test
    void narrowingRoundsAsTheJavaLoops() {
        float[] values = awkwardFloats(1 << 20, 11);
        for (boolean bfloat16 : new boolean[] {true, false}) {
            short[] expected = new short[values.length + 8];
            short[] actual = new short[values.length + 8];
            int start = 5;
            int end = values.length - 2;
            int at = 3;
            if (bfloat16) {
                JavaLoops.narrowToBfloat16(values, start, end, expected, at);
            } else {
                JavaLoops.narrowToFloat16(values, start, end, expected, at);
            }
            NativeLoops.narrow(bfloat16, values, start, end, actual, at);
            for (int i = 0; i < actual.length; i++) {
                int k = i - at + start;
                assertEquals(expected[i], actual[i], (bfloat16 ? "bfloat16 of " : "float16 of ")
                        + (k >= 0 && k < values.length ? Integer.toHexString(Float.floatToRawIntBits(values[k])) : "nothing"));
            }
        }
    }

    @Test
    void bulkLoopsCheckRangesBeforeGoingNative() {
        float[] a = new float[1000];
        double[] lanes = new double[JavaLoops.SUM_LANES];
        org.junit.jupiter.api.Assertions.assertThrows(IndexOutOfBoundsException.class,
                () -> BulkLoops.addSquares(a, 500, 1001, lanes));
        short[] bits = new short[600];
        org.junit.jupiter.api.Assertions.assertThrows(IndexOutOfBoundsException.class,
                () -> BulkLoops.widen(dev.optsidecar.server.engine.WireType.BFLOAT16, bits, 300, a, 0, 400));
        org.junit.jupiter.api.Assertions.assertThrows(IndexOutOfBoundsException.class,
                () -> BulkLoops.narrow(dev.optsidecar.server.engine.WireType.FLOAT16, a, 0, 700, bits, 0));
    }
}
