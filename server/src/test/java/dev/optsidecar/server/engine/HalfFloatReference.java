package dev.optsidecar.server.engine;

/**
 * bfloat16 and float16 from their definitions (sign, exponent with bias, significand with a hidden
 * bit; subnormals at the smallest exponent; the all-ones exponent for Inf and NaN), computed in
 * double arithmetic, and rounding as IEEE 754 defines it: to the nearest representable value, a tie
 * to the one with an even significand, and to Inf where the value, rounded with an unbounded
 * exponent, would exceed the largest finite one. Independent of the bit manipulations under test.
 */
public enum HalfFloatReference {
    BFLOAT16(8, 7),
    FLOAT16(5, 10);

    private final int exponentBits;
    private final int mantissaBits;
    private final int bias;

    HalfFloatReference(int exponentBits, int mantissaBits) {
        this.exponentBits = exponentBits;
        this.mantissaBits = mantissaBits;
        this.bias = (1 << (exponentBits - 1)) - 1;
    }

    /** The pattern with an all-ones exponent and zero significand: +Inf. */
    public int infinityBits() {
        return ((1 << exponentBits) - 1) << mantissaBits;
    }

    /** The value of {@code bits} (NaN for NaN patterns). */
    public double value(int bits) {
        boolean negative = (bits & 0x8000) != 0;
        int exponent = (bits >>> mantissaBits) & ((1 << exponentBits) - 1);
        int mantissa = bits & ((1 << mantissaBits) - 1);
        double magnitude;
        if (exponent == (1 << exponentBits) - 1) {
            magnitude = mantissa == 0 ? Double.POSITIVE_INFINITY : Double.NaN;
        } else {
            magnitude = positiveValue(bits & 0x7fff);
        }
        return negative ? -magnitude : magnitude;
    }

    /** The value of a positive pattern by the finite formula, read with an unbounded exponent at +Inf's pattern. */
    private double positiveValue(int bits) {
        int exponent = bits >>> mantissaBits;
        int mantissa = bits & ((1 << mantissaBits) - 1);
        if (exponent == 0) {
            return Math.scalb((double) mantissa, 1 - bias - mantissaBits);
        }
        return Math.scalb((double) ((1 << mantissaBits) + mantissa), exponent - bias - mantissaBits);
    }

    /** {@code x} rounded to this format (for a non-NaN x), as the 16-bit pattern. */
    public int round(float x) {
        if (Float.isNaN(x)) {
            throw new IllegalArgumentException("NaN has no rounded value; check NaN separately");
        }
        int sign = (Float.floatToRawIntBits(x) >>> 16) & 0x8000;
        double a = Math.abs((double) x);
        int inf = infinityBits();
        if (a >= positiveValue(inf)) {
            return sign | inf;
        }
        // The largest positive pattern not above a (positive patterns increase with their value).
        int lo = 0;
        int hi = inf;
        while (hi - lo > 1) {
            int mid = (lo + hi) >>> 1;
            if (positiveValue(mid) <= a) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        int up = lo + 1;
        double below = a - positiveValue(lo);
        double above = positiveValue(up) - a;
        int chosen = below < above ? lo : above < below ? up : (lo % 2 == 0 ? lo : up);
        return sign | chosen;
    }

    /** Each value rounded to this format and widened back: what a 16-bit chunk of it carries. */
    public float[][] rounded(float[][] values) {
        float[][] out = new float[values.length][];
        for (int t = 0; t < values.length; t++) {
            out[t] = new float[values[t].length];
            for (int i = 0; i < values[t].length; i++) {
                out[t][i] = (float) value(round(values[t][i]));
            }
        }
        return out;
    }
}
