package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.NativeLibrary;

/**
 * The native twins of {@link JavaLoops} ({@code src/main/cpu/cpu_loops.cc}), compiled so that
 * eight elements go at once: the same operations in the same order, so the same bits. Callers
 * check every range against the arrays first ({@link BulkLoops}): native code does not.
 */
final class NativeLoops {
    static final String LIBRARY_FILE = "liboptsidecar_cpu.so";
    /** {@code -Doptsidecar.cpu.native=false} runs the Java loops instead (to compare them). */
    static final String ENABLED_PROPERTY = "optsidecar.cpu.native";

    private NativeLoops() {}

    /** Null when the library is loaded and enabled, else why the Java loops run. */
    static final String UNAVAILABLE = load();

    private static String load() {
        if (!Boolean.parseBoolean(System.getProperty(ENABLED_PROPERTY, "true"))) {
            return "-D" + ENABLED_PROPERTY + "=false";
        }
        return NativeLibrary.load(LIBRARY_FILE, "CPU loops", "it was built without g++");
    }

    /** {@link JavaLoops#addSquares}. */
    static native void addSquares(float[] a, int from, int to, double[] lanes);

    /**
     * {@code to[from, end)} = the little-endian floats of direct {@code buffer} from byte
     * {@code byteOffset}, their squares (as stored in {@code to}) added to {@code lanes} as
     * {@link JavaLoops#addSquares} adds them.
     */
    static native void copyAddingSquares(java.nio.ByteBuffer buffer, long byteOffset, float[] to, int from, int end,
                                         double[] lanes);

    /** {@link JavaLoops#widenBfloat16} or {@link JavaLoops#widenFloat16}. */
    static native void widen(boolean bfloat16, short[] bits, int at, float[] to, int from, int end);

    /**
     * {@link #widen}, then the squares of {@code to[from, end)} added to {@code lanes} as
     * {@link JavaLoops#addSquares} adds them, in one pass.
     */
    static native void widenAddingSquares(boolean bfloat16, short[] bits, int at, float[] to, int from, int end,
                                          double[] lanes);

    /** {@link JavaLoops#narrowToBfloat16} or {@link JavaLoops#narrowToFloat16}. */
    static native void narrow(boolean bfloat16, float[] from, int start, int end, short[] to, int at);

    /** {@link #narrow} into a byte array: the little-endian 16-bit values from byte {@code byteAt} (even) on. */
    static native void narrowIntoBytes(boolean bfloat16, float[] from, int start, int end, byte[] to, int byteAt);

    /**
     * RAdam's rectified step ({@link RAdamLoops#rectified}'s bits), or with flag 8 Adam's
     * ({@link AdamLoops#adam}'s, without amsgrad), over elements {@code [from, to)}
     * of a block whose gradient and trainer's weights are the little-endian floats of direct
     * buffers {@code gradient} and {@code weights} (views of one segment) from bytes
     * {@code gradientByte} and {@code weightsByte} of each, element {@code from} first: θ, m, v are
     * read from {@code theta}, {@code m}, {@code v} and their new values written to
     * {@code thetaOut}, {@code mOut}, {@code vOut} and θ's also to the segment's weights; the
     * gradient's squares are added to {@code lanes[0, 8)} as {@link JavaLoops#addSquares} adds
     * them, and the CRC-32C in {@code crc32c[0]} is continued over the weights written, unless
     * {@code crc32c[1]} comes back 0 (an x86-64 without SSE4.2: the caller computes it). Each
     * segment value is read once, so the value checked is the value used; regions that overlap in
     * memory throw IllegalArgumentException before anything is read.
     *
     * <p>It stops at the first element whose weight in the segment is not bitwise theta's
     * ({@link SegmentStepKernel#EDITED}) or whose gradient is NaN or infinite
     * ({@link SegmentStepKernel#NON_FINITE}): then the segment's weights are as it found them, and
     * the lanes, the CRC and the output arrays hold anything.
     *
     * @param scalars grad_scale, decay_factor, weight_decay, beta1, one_minus_beta1, beta2,
     *                one_minus_beta2, step_size, eps, inv_sqrt_bias_correction2 (Adam's)
     * @param flags   1 decoupled_weight_decay, 2 coupled_weight_decay, 4 lerp_first_moment, 8 Adam
     * @return {@link SegmentStepKernel#APPLIED}, {@code EDITED} or {@code NON_FINITE}
     */
    static native int segmentStep(java.nio.ByteBuffer gradient, long gradientByte,
                                       java.nio.ByteBuffer weights, long weightsByte, float[] theta, float[] m,
                                       float[] v, float[] thetaOut, float[] mOut, float[] vOut, int from, int to,
                                       float[] scalars, int flags, double[] lanes, int[] crc32c);

    /**
     * Test hook: forces the instruction set {@link #segmentStep} uses (0 portable, 1 AVX2+FMA,
     * 2 AVX-512F; −1 the best this CPU has) and returns the one now in use. A level this CPU lacks
     * is refused: the one in use stays and is returned.
     */
    static native int segmentStepIsa(int force);
}
