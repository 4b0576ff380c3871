package dev.optsidecar.server.snapshot;

import java.nio.ByteBuffer;

/** Where a tensor's values come from when a snapshot or export is written. */
@FunctionalInterface
public interface TensorReader {
    /**
     * Reads {@code count} float32 values of a tensor starting at element {@code offset} into
     * {@code dst} (little-endian), advancing {@code dst}'s position by {@code count * 4}. The store
     * hands over a little-endian buffer whose remaining space is exactly {@code count * 4} bytes.
     */
    void read(long offset, int count, ByteBuffer dst);
}
