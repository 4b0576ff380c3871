package dev.optsidecar.server.engine;

/**
 * Conversions between float32 and the 16-bit float types, as raw bits. Narrowing rounds to
 * nearest, ties to even, as IEEE 754 and torch's {@code .to(dtype)} do; a NaN stays a NaN (its
 * sign and top payload bits kept, made quiet) and a value past the range becomes ±Inf.
 */
public final class HalfFloats {
    private HalfFloats() {}

    /** Every float16 pattern widened, so that the ingest loop is a table lookup. */
    private static final float[] FLOAT16_VALUES = new float[1 << 16];

    static {
        for (int bits = 0; bits < FLOAT16_VALUES.length; bits++) {
            FLOAT16_VALUES[bits] = widenFloat16((short) bits);
        }
    }

    /** bfloat16 is float32's top half: widening appends 16 zero bits. */
    public static float bfloat16ToFloat(short bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    public static short floatToBfloat16(float value) {
        int bits = Float.floatToRawIntBits(value);
        if ((bits & 0x7fffffff) > 0x7f800000) {
            return (short) ((bits >>> 16) | 0x0040); // truncating could leave Inf: keep a quiet NaN
        }
        // Adding just under half a unit, plus the kept part's lowest bit, rounds to nearest even;
        // a carry runs into the exponent, and past the largest finite value to Inf.
        int rounding = 0x7fff + ((bits >>> 16) & 1);
        return (short) ((bits + rounding) >>> 16);
    }

    public static float float16ToFloat(short bits) {
        return FLOAT16_VALUES[bits & 0xffff];
    }

    private static float widenFloat16(short h) {
        int sign = (h & 0x8000) << 16;
        int exponent = (h >>> 10) & 0x1f;
        int mantissa = h & 0x3ff;
        if (exponent == 0x1f) {
            return Float.intBitsToFloat(sign | 0x7f800000 | (mantissa << 13));
        }
        if (exponent == 0) { // zero or subnormal: mantissa × 2^-24, exact in float32
            float magnitude = mantissa * 0x1p-24f;
            return sign != 0 ? -magnitude : magnitude;
        }
        return Float.intBitsToFloat(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
    }

    public static short floatToFloat16(float value) {
        int bits = Float.floatToRawIntBits(value);
        int sign = (bits >>> 16) & 0x8000;
        int magnitude = bits & 0x7fffffff;
        if (magnitude > 0x7f800000) {
            return (short) (sign | 0x7e00 | ((magnitude >>> 13) & 0x3ff));
        }
        if (magnitude >= 0x477ff000) { // 65520 and up (halfway past 65504, the largest) round to Inf
            return (short) (sign | 0x7c00);
        }
        if (magnitude >= 0x38800000) { // normal in float16 (2^-14 and up): rebias, round as bfloat16 does
            int rebiased = magnitude - ((127 - 15) << 23);
            int rounding = 0xfff + ((magnitude >>> 13) & 1);
            return (short) (sign | ((rebiased + rounding) >>> 13));
        }
        // Subnormal or zero: count units of 2^-24, rounded to nearest even (exact in double);
        // 1024 units carry into the smallest normal, whose bits are exactly 1024.
        int units = (int) Math.rint(Math.abs((double) value) * 0x1p24);
        return (short) (sign | units);
    }
}
