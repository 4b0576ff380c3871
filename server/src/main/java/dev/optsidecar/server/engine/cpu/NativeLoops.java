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

    /** {@link JavaLoops#narrowToBfloat16} or {@link JavaLoops#narrowToFloat16}. */
    static native void narrow(boolean bfloat16, float[] from, int start, int end, short[] to, int at);
}
