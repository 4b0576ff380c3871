package dev.optsidecar.server.snapshot;

import java.nio.ByteBuffer;

/** Where a tensor's values go when a snapshot file is read back. */
@FunctionalInterface
public interface TensorWriter {
    /**
     * Receives {@code src.remaining() / 4} little-endian float32 values for the elements starting
     * at {@code offset}. The buffer is reused for the next chunk once this returns.
     */
    void write(long offset, ByteBuffer src);
}
