package dev.optsidecar.server.engine;

/**
 * The element type of float tensors in chunks. The engine's buffers are float32 whatever it is:
 * a 16-bit type is widened as it is copied in and rounded as it is copied out.
 */
public enum WireType {
    FLOAT32(Float.BYTES),
    BFLOAT16(Short.BYTES),
    FLOAT16(Short.BYTES);

    /** Bytes per element on the wire. */
    public final int bytes;

    WireType(int bytes) {
        this.bytes = bytes;
    }

    /** The float32 value of a 16-bit element (exact: every bfloat16 and float16 value is a float32). */
    public float widen(short bits) {
        return switch (this) {
            case BFLOAT16 -> HalfFloats.bfloat16ToFloat(bits);
            case FLOAT16 -> HalfFloats.float16ToFloat(bits);
            case FLOAT32 -> throw new IllegalStateException("float32 is not a 16-bit type");
        };
    }

    /** A float32 value rounded to nearest even in this 16-bit type. */
    public short narrow(float value) {
        return switch (this) {
            case BFLOAT16 -> HalfFloats.floatToBfloat16(value);
            case FLOAT16 -> HalfFloats.floatToFloat16(value);
            case FLOAT32 -> throw new IllegalStateException("float32 is not a 16-bit type");
        };
    }

    /** The name clients know it by. */
    public String describe() {
        return name().toLowerCase(java.util.Locale.ROOT);
    }
}
