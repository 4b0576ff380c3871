package dev.optsidecar.server.shm;

import java.nio.ByteBuffer;
import java.util.function.Supplier;

/**
 * A client's segment as a step or pull uses it: each tensor's gradient and weights regions,
 * reached through a file in --shm-dir ({@link SegmentFile}: copies through a buffer) or a sealed
 * memfd the server maps ({@link MappedSegment}: views straight into the client's memory).
 * Buffers it returns are used only inside {@link #using}.
 */
public interface Segment extends AutoCloseable {
    /** How errors name the segment. */
    String name();

    /** Where each tensor's gradient and weights regions lie, checked against the segment's size. */
    SegmentLayout layout();

    default int tensors() {
        return layout().tensors();
    }

    default long numel(int tensor) {
        return layout().numel(tensor);
    }

    /**
     * Whether its buffers are views of memory that cannot vanish while mapped (a sealed memfd):
     * native code may then read and write them directly, which a file that a client can truncate
     * would turn into a fault that takes the process down.
     */
    default boolean isMapped() {
        return false;
    }

    /** Fails with FAILED_PRECONDITION, SHARED_MEMORY_FAULT unless the segment can still be used. */
    void verify();

    /** Runs {@code work}, which may use buffers the segment returned. */
    <T> T using(Supplier<T> work);

    /**
     * {@code count} floats of a tensor's gradient, or with {@code weights} of its weights, from
     * element {@code element}: a view of the segment, or {@code scratch} filled with them (flipped).
     */
    ByteBuffer read(boolean weights, int tensor, long element, int count, ByteBuffer scratch);

    /**
     * Where {@code count} floats of a tensor's weights from element {@code element} go: a view of
     * the segment, or {@code scratch}; the caller fills it and hands it to {@link #weightsFilled}.
     */
    ByteBuffer weightsTarget(int tensor, long element, int count, ByteBuffer scratch);

    /** Stores {@code filled} (flipped), which {@link #weightsTarget} gave for the same place, if it is not a view. */
    void weightsFilled(int tensor, long element, ByteBuffer filled);

    @Override
    void close();
}
