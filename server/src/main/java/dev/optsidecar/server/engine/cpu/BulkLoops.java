package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.WireType;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Objects;

/**
 * The bulk loops a tensor runs outside its kernels, on {@link NativeLoops} where the library
 * loaded and the range is long enough to pay for the call, else on {@link JavaLoops}: the same
 * bits either way.
 */
final class BulkLoops {
    private BulkLoops() {}

    /** Whether the native loops run; else {@link NativeLoops#UNAVAILABLE} says why not. */
    static final boolean NATIVE = NativeLoops.UNAVAILABLE == null;
    /** Shorter ranges stay in Java: a native call costs about as much as this many elements. */
    static final int NATIVE_MIN = 256;

    static void addSquares(float[] a, int from, int to, double[] lanes) {
        if (NATIVE && to - from >= NATIVE_MIN) {
            Objects.checkFromToIndex(from, to, a.length);
            Objects.checkFromToIndex(0, JavaLoops.SUM_LANES, lanes.length);
            NativeLoops.addSquares(a, from, to, lanes);
        } else {
            JavaLoops.addSquares(a, from, to, lanes);
        }
    }

    /**
     * Copies {@code end − from} little-endian floats from {@code source} (direct, from its
     * position plus {@code byteOffset}) into {@code to[from, end)} and adds their squares to
     * {@code lanes} as {@link #addSquares} over {@code to[from, end)} would, in one pass (each
     * few thousand values summed right after they are stored, from the cache).
     *
     * <p>A fault reading {@code source} would take the whole process down in native code (a Java
     * copy turns it into an error): sources are memory that cannot vanish, the server's own
     * buffers or a sealed segment's mapping (its memfd cannot shrink).
     *
     * @return false, having done nothing, where that pass cannot run (no native loops, a heap
     *         buffer, a short range): the caller copies and sums itself
     */
    static boolean copyAddingSquares(ByteBuffer source, long byteOffset, float[] to, int from, int end,
                                     double[] lanes) {
        if (!NATIVE || !source.isDirect() || end - from < NATIVE_MIN) {
            return false;
        }
        Objects.checkFromToIndex(from, end, to.length);
        Objects.checkFromIndexSize(byteOffset, (long) (end - from) * Float.BYTES, source.remaining());
        Objects.checkFromToIndex(0, JavaLoops.SUM_LANES, lanes.length);
        NativeLoops.copyAddingSquares(source, source.position() + byteOffset, to, from, end, lanes);
        return true;
    }

    /** {@code to[from, end)} = the 16-bit {@code wire} values {@code bits[at, at + end − from)}. */
    static void widen(WireType wire, short[] bits, int at, float[] to, int from, int end) {
        boolean bfloat16 = wire == WireType.BFLOAT16;
        if (NATIVE && end - from >= NATIVE_MIN) {
            Objects.checkFromToIndex(from, end, to.length);
            Objects.checkFromIndexSize(at, end - from, bits.length);
            NativeLoops.widen(bfloat16, bits, at, to, from, end);
        } else if (bfloat16) {
            JavaLoops.widenBfloat16(bits, at, to, from, end);
        } else {
            JavaLoops.widenFloat16(bits, at, to, from, end);
        }
    }

    /**
     * {@link #widen}, then {@link #addSquares} over {@code to[from, end)}: one pass natively (each
     * few thousand values summed right after they are stored), the same bits either way.
     */
    static void widenAddingSquares(WireType wire, short[] bits, int at, float[] to, int from, int end,
                                   double[] lanes) {
        if (NATIVE && end - from >= NATIVE_MIN) {
            Objects.checkFromToIndex(from, end, to.length);
            Objects.checkFromIndexSize(at, end - from, bits.length);
            Objects.checkFromToIndex(0, JavaLoops.SUM_LANES, lanes.length);
            NativeLoops.widenAddingSquares(wire == WireType.BFLOAT16, bits, at, to, from, end, lanes);
        } else {
            widen(wire, bits, at, to, from, end);
            addSquares(to, from, end, lanes);
        }
    }

    /**
     * Writes {@code from[start, end)} into {@code to} from byte {@code byteAt} on as little-endian
     * {@code wire} values: copied as float32, rounded to nearest even to a 16-bit type.
     */
    static void toWire(WireType wire, float[] from, int start, int end, byte[] to, int byteAt) {
        Objects.checkFromToIndex(start, end, from.length);
        Objects.checkFromIndexSize(byteAt, (end - start) * wire.bytes, to.length);
        if (wire == WireType.FLOAT32) {
            ByteBuffer.wrap(to, byteAt, (end - start) * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                    .put(from, start, end - start);
        } else if (NATIVE && end - start >= NATIVE_MIN) {
            NativeLoops.narrowIntoBytes(wire == WireType.BFLOAT16, from, start, end, to, byteAt);
        } else {
            short[] bits = new short[end - start];
            narrow(wire, from, start, end, bits, 0);
            ByteBuffer.wrap(to, byteAt, bits.length * Short.BYTES).order(ByteOrder.LITTLE_ENDIAN).asShortBuffer()
                    .put(bits);
        }
    }

    /** Rounds {@code from[start, end)} to the 16-bit {@code wire} type into {@code to} from {@code at} on. */
    static void narrow(WireType wire, float[] from, int start, int end, short[] to, int at) {
        boolean bfloat16 = wire == WireType.BFLOAT16;
        if (NATIVE && end - start >= NATIVE_MIN) {
            Objects.checkFromToIndex(start, end, from.length);
            Objects.checkFromIndexSize(at, end - start, to.length);
            NativeLoops.narrow(bfloat16, from, start, end, to, at);
        } else if (bfloat16) {
            JavaLoops.narrowToBfloat16(from, start, end, to, at);
        } else {
            JavaLoops.narrowToFloat16(from, start, end, to, at);
        }
    }
}
