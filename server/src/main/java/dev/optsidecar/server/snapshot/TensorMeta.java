package dev.optsidecar.server.snapshot;

import java.util.Arrays;

/** A tensor as a safetensors header describes it: its shape and element count. */
public record TensorMeta(long[] shape, long numel) {
    public TensorMeta {
        shape = shape.clone();
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** Bytes of float32 data. */
    public long bytes() {
        return numel * Float.BYTES;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof TensorMeta t && t.numel == numel && Arrays.equals(t.shape, shape);
    }

    @Override
    public int hashCode() {
        return 31 * Arrays.hashCode(shape) + Long.hashCode(numel);
    }

    @Override
    public String toString() {
        return "TensorMeta" + Arrays.toString(shape);
    }

    /**
     * The product of {@code shape} (1 for a scalar); rejects negative dimensions and products whose
     * float32 byte size does not fit in a long.
     */
    static long numel(long[] shape) {
        long n = 1;
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            try {
                n = Math.multiplyExact(n, d);
                Math.multiplyExact(n, (long) Float.BYTES);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " is too large");
            }
        }
        return n;
    }
}
