package dev.optsidecar.server.snapshot;

import java.util.Arrays;
import java.util.Objects;

/**
 * One tensor to write: its key in the file, its shape (empty for a scalar, which holds one
 * element) and where its values come from.
 */
public record TensorOut(String key, long[] shape, TensorReader values) {
    public TensorOut {
        Objects.requireNonNull(key, "key");
        Objects.requireNonNull(values, "values");
        shape = shape.clone();
        TensorMeta.numel(shape);
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** Product of the shape; 1 for a scalar. */
    public long numel() {
        return TensorMeta.numel(shape);
    }

    @Override
    public String toString() {
        return "TensorOut[" + key + " " + Arrays.toString(shape) + "]";
    }
}
