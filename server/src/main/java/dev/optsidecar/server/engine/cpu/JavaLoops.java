package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.HalfFloats;

/**
 * The CPU engine's bulk loops outside its kernels, in Java: the gradient's sum of squares and the
 * 16-bit conversions. They define the bits; {@link NativeLoops} gives the same ones faster.
 */
final class JavaLoops {
    private JavaLoops() {}

    /** Lanes of the sum of squares: independent sums, so the adds overlap in the pipeline. */
    static final int SUM_LANES = 8;

    /**
     * Adds the squares of {@code a[from, to)}, in double, to {@code lanes}: element i goes to lane
     * (i − from) mod 8, each lane summed in order from zero and then added to its entry.
     */
    static void addSquares(float[] a, int from, int to, double[] lanes) {
        double s0 = 0;
        double s1 = 0;
        double s2 = 0;
        double s3 = 0;
        double s4 = 0;
        double s5 = 0;
        double s6 = 0;
        double s7 = 0;
        int i = from;
        for (; i + SUM_LANES <= to; i += SUM_LANES) {
            double v0 = a[i];
            double v1 = a[i + 1];
            double v2 = a[i + 2];
            double v3 = a[i + 3];
            double v4 = a[i + 4];
            double v5 = a[i + 5];
            double v6 = a[i + 6];
            double v7 = a[i + 7];
            s0 += v0 * v0;
            s1 += v1 * v1;
            s2 += v2 * v2;
            s3 += v3 * v3;
            s4 += v4 * v4;
            s5 += v5 * v5;
            s6 += v6 * v6;
            s7 += v7 * v7;
        }
        double[] tail = {s0, s1, s2, s3, s4, s5, s6, s7};
        for (int lane = 0; i < to; i++, lane++) {
            double v = a[i];
            tail[lane] += v * v;
        }
        for (int lane = 0; lane < SUM_LANES; lane++) {
            lanes[lane] += tail[lane];
        }
    }

    /** {@code to[from, end)} = the bfloat16 values {@code bits[at, at + end − from)}. */
    static void widenBfloat16(short[] bits, int at, float[] to, int from, int end) {
        int k = at - from;
        for (int i = from; i < end; i++) {
            to[i] = HalfFloats.bfloat16ToFloat(bits[k + i]);
        }
    }

    /** {@code to[from, end)} = the float16 values {@code bits[at, at + end − from)}. */
    static void widenFloat16(short[] bits, int at, float[] to, int from, int end) {
        int k = at - from;
        for (int i = from; i < end; i++) {
            to[i] = HalfFloats.float16ToFloat(bits[k + i]);
        }
    }

    /** Rounds {@code from[start, end)} to bfloat16 into {@code to} from {@code at} on. */
    static void narrowToBfloat16(float[] from, int start, int end, short[] to, int at) {
        int k = at - start;
        for (int i = start; i < end; i++) {
            to[k + i] = HalfFloats.floatToBfloat16(from[i]);
        }
    }

    /** Rounds {@code from[start, end)} to float16 into {@code to} from {@code at} on. */
    static void narrowToFloat16(float[] from, int start, int end, short[] to, int at) {
        int k = at - start;
        for (int i = start; i < end; i++) {
            to[k + i] = HalfFloats.floatToFloat16(from[i]);
        }
    }
}
