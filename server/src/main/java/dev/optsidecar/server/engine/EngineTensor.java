package dev.optsidecar.server.engine;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;

/**
 * One tensor's memory as an engine holds it: the parameters, a gradient buffer that steps are
 * assembled into, and the optimizer's state slots. Only the engine touches the buffers; everything
 * above it moves data through these methods, as little-endian float32 bytes (or, where a
 * {@link WireType} is given, bfloat16 or float16 ones, converted in the copy).
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

    /**
     * Allocates another gradient buffer, for one trainer's step to arrive in while other trainers'
     * steps arrive in theirs, and returns its handle.
     */
    int newGradientBuffer();

    void freeGradientBuffer(int handle);

    /** As {@link #writeGradient(long, ByteBuffer)}, into gradient buffer {@code handle}. */
    default Ingest writeGradient(int handle, long offset, ByteBuffer src) {
        return writeGradient(handle, offset, src, WireType.FLOAT32);
    }

    /**
     * As {@link #writeGradient(int, long, ByteBuffer)}, from {@code src.remaining()/wire.bytes}
     * elements of type {@code wire}, widened to float32 in the same pass as the copy and checks.
     */
    Ingest writeGradient(int handle, long offset, ByteBuffer src, WireType wire);

    /** As {@link #readGradient(long, int, ByteBuffer)}, from gradient buffer {@code handle}. */
    void readGradient(int handle, long offset, int count, ByteBuffer dst);

    /**
     * Makes buffer {@code handle} the gradient the next step uses, in O(1): the two buffers swap,
     * so {@code handle} then names the buffer the step gradient was in.
     */
    void useGradient(int handle);

    /**
     * Sets the step's gradient to the sum of buffers {@code handles}, added in that order, divided
     * by {@code divisor} (float32 arithmetic), and returns the result's sum of squares.
     */
    double combineGradients(int[] handles, float divisor);

    /** Writes {@code count} parameters starting at {@code offset} into {@code dst}. */
    default void readParams(long offset, int count, ByteBuffer dst) {
        readParams(offset, count, dst, WireType.FLOAT32);
    }

    /** As {@link #readParams(long, int, ByteBuffer)}, rounded to {@code wire} on the way out. */
    void readParams(long offset, int count, ByteBuffer dst, WireType wire);

    /** Writes {@code count} gradient values starting at {@code offset} into {@code dst} (for the step journal). */
    void readGradient(long offset, int count, ByteBuffer dst);

    /** Writes {@code count} elements of state slot {@code slot} starting at {@code offset} into {@code dst}. */
    default void readSlot(int slot, long offset, int count, ByteBuffer dst) {
        readSlot(slot, offset, count, dst, WireType.FLOAT32);
    }

    /** As {@link #readSlot(int, long, int, ByteBuffer)}, rounded to {@code wire} on the way out. */
    void readSlot(int slot, long offset, int count, ByteBuffer dst, WireType wire);

    /** Computes {@code count} elements of view kernel {@code view} starting at {@code offset} into {@code dst}. */
    default void readView(KernelCall view, long offset, int count, ByteBuffer dst) {
        readView(view, offset, count, dst, WireType.FLOAT32);
    }

    /** As {@link #readView(KernelCall, long, int, ByteBuffer)}, rounded to {@code wire} on the way out. */
    void readView(KernelCall view, long offset, int count, ByteBuffer dst, WireType wire);

    /** Releases the memory; the tensor must not be used afterwards. */
    void free();
}
