package dev.optsidecar.server.engine;

import java.nio.ByteBuffer;

/**
 * One tensor's memory as an engine holds it: the parameters, a gradient buffer that steps are
 * assembled into, and the optimizer's state slots. Only the engine touches the buffers; everything
 * above it moves data through these methods, as little-endian float32 bytes.
 */
public interface EngineTensor {
    long numel();

    int slotCount();

    /** Bytes held for this tensor (parameters, gradient and state). */
    long bytes();

    /** Copies {@code src.remaining()/4} floats into the parameters at {@code offset}. */
    void writeParams(long offset, ByteBuffer src);

    /** Copies {@code src.remaining()/4} floats into state slot {@code slot} at {@code offset}. */
    void writeSlot(int slot, long offset, ByteBuffer src);

    /**
     * Copies {@code src.remaining()/4} floats into the gradient buffer at {@code offset}, noting
     * the first NaN or Inf and the values' sum of squares on the way.
     */
    Ingest writeGradient(long offset, ByteBuffer src);

    /** Writes {@code count} parameters starting at {@code offset} into {@code dst}. */
    void readParams(long offset, int count, ByteBuffer dst);

    /** Writes {@code count} gradient values starting at {@code offset} into {@code dst} (for the step journal). */
    void readGradient(long offset, int count, ByteBuffer dst);

    /** Writes {@code count} elements of state slot {@code slot} starting at {@code offset} into {@code dst}. */
    void readSlot(int slot, long offset, int count, ByteBuffer dst);

    /** Computes {@code count} elements of a derived view starting at {@code offset} into {@code dst}. */
    void readView(ViewKernel view, long offset, int count, ByteBuffer dst);

    /** Releases the memory; the tensor must not be used afterwards. */
    void free();
}
