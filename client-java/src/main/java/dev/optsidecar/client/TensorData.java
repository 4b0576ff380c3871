package dev.optsidecar.client;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;

/**
 * A tensor's float32 values on the client side, as a source of gradients or initial weights and as
 * a destination for weights. Values move as little-endian bytes, the protocol's wire format.
 */
public interface TensorData {
    long numel();

    /** Writes {@code count} values starting at {@code offset} into {@code dst} (little-endian). */
    void read(long offset, int count, ByteBuffer dst);

    /** Copies {@code src.remaining()/4} little-endian values into this tensor at {@code offset}. */
    void write(long offset, ByteBuffer src);

    /**
     * A little-endian view of {@code count} values at {@code offset} that may be sent without a
     * copy, or null when the values must be copied out with {@link #read}.
     */
    default ByteBuffer wrap(long offset, int count) {
        return null;
    }

    /** A float[] as tensor data; reads and writes go straight to the array. */
    static TensorData of(float[] values) {
        return new TensorData() {
            @Override
            public long numel() {
                return values.length;
            }

            @Override
            public void read(long offset, int count, ByteBuffer dst) {
                dst.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(values, (int) offset, count);
                dst.position(dst.position() + count * Float.BYTES);
            }

            @Override
            public void write(long offset, ByteBuffer src) {
                FloatBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
                in.get(values, (int) offset, in.remaining());
            }
        };
    }

    /**
     * A buffer of little-endian float32 values, from its position to its limit. Gradients in such a
     * buffer are sent without copying.
     */
    static TensorData of(ByteBuffer littleEndianFloats) {
        ByteBuffer base = littleEndianFloats.slice().order(ByteOrder.LITTLE_ENDIAN);
        if (base.remaining() % Float.BYTES != 0) {
            throw new IllegalArgumentException("buffer length " + base.remaining() + " is not a multiple of 4");
        }
        return new TensorData() {
            @Override
            public long numel() {
                return base.remaining() / Float.BYTES;
            }

            @Override
            public void read(long offset, int count, ByteBuffer dst) {
                dst.put(wrap(offset, count));
            }

            @Override
            public void write(long offset, ByteBuffer src) {
                base.duplicate().position((int) offset * Float.BYTES).put(src.duplicate());
            }

            @Override
            public ByteBuffer wrap(long offset, int count) {
                int from = (int) offset * Float.BYTES;
                return base.duplicate().position(from).limit(from + count * Float.BYTES).slice();
            }
        };
    }
}
