package dev.optsidecar.client;

import dev.optsidecar.proto.v1.WireDtype;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.ShortBuffer;

/**
 * Chunk elements of a {@link WireDtype}: float32 as it is, or bfloat16 and float16 converted from
 * and to the caller's float32 values (rounding to nearest even, as the server and torch do).
 */
final class WireElements {
    private WireElements() {}

    static int bytes(WireDtype wire) {
        return wire == WireDtype.WIRE_FLOAT32 ? Float.BYTES : Short.BYTES;
    }

    /** {@code count} float32 values from {@code data} at {@code offset} as chunk bytes of {@code wire}. */
    static byte[] narrow(TensorData data, long offset, int count, WireDtype wire) {
        ByteBuffer floats = ByteBuffer.allocate(count * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        data.read(offset, count, floats);
        FloatBuffer in = floats.flip().asFloatBuffer();
        byte[] out = new byte[count * Short.BYTES];
        ShortBuffer bits = ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN).asShortBuffer();
        for (int i = 0; i < count; i++) {
            float v = in.get(i);
            bits.put(i, wire == WireDtype.WIRE_BFLOAT16 ? toBfloat16(v) : toFloat16(v));
        }
        return out;
    }

    /** Chunk bytes of {@code wire} as little-endian float32 bytes. */
    static ByteBuffer widen(ByteBuffer chunk, WireDtype wire) {
        ShortBuffer in = chunk.slice().order(ByteOrder.LITTLE_ENDIAN).asShortBuffer();
        int count = in.remaining();
        ByteBuffer out = ByteBuffer.allocate(count * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        FloatBuffer floats = out.asFloatBuffer();
        for (int i = 0; i < count; i++) {
            short h = in.get(i);
            floats.put(i, wire == WireDtype.WIRE_BFLOAT16 ? Float.intBitsToFloat((h & 0xffff) << 16) : fromFloat16(h));
        }
        return out;
    }

    static short toBfloat16(float value) {
        int bits = Float.floatToRawIntBits(value);
        if ((bits & 0x7fffffff) > 0x7f800000) {
            return (short) ((bits >>> 16) | 0x0040); // a NaN stays a (quiet) NaN
        }
        return (short) ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16);
    }

    static short toFloat16(float value) {
        int bits = Float.floatToRawIntBits(value);
        int sign = (bits >>> 16) & 0x8000;
        int magnitude = bits & 0x7fffffff;
        if (magnitude > 0x7f800000) {
            return (short) (sign | 0x7e00 | ((magnitude >>> 13) & 0x3ff));
        }
        if (magnitude >= 0x477ff000) { // rounds past 65504
            return (short) (sign | 0x7c00);
        }
        if (magnitude >= 0x38800000) {
            int rebiased = magnitude - ((127 - 15) << 23);
            return (short) (sign | ((rebiased + 0xfff + ((magnitude >>> 13) & 1)) >>> 13));
        }
        return (short) (sign | (int) Math.rint(Math.abs((double) value) * 0x1p24)); // subnormal: units of 2^-24
    }

    static float fromFloat16(short h) {
        int sign = (h & 0x8000) << 16;
        int exponent = (h >>> 10) & 0x1f;
        int mantissa = h & 0x3ff;
        if (exponent == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mantissa << 13));
        }
        if (exponent == 0) {
            float magnitude = mantissa * 0x1p-24f;
            return sign != 0 ? -magnitude : magnitude;
        }
        return Float.intBitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
    }
}
