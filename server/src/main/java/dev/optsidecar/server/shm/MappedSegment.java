package dev.optsidecar.server.shm;

import dev.optsidecar.server.OptError;

import java.nio.ByteBuffer;
import java.util.function.Supplier;

/**
 * A sealed segment as one stream or pull lays it out: views into the mapped memfd, checked
 * against its size when opened. Holds the memory until closed.
 */
final class MappedSegment implements Segment {
    private final SealedMemory memory;
    private final SegmentLayout layout;
    private volatile boolean closed;

    private MappedSegment(SealedMemory memory, SegmentLayout layout) {
        this.memory = memory;
        this.layout = layout;
    }

    /** Lays {@code layout} over {@code memory}, which the caller holds (released here if refused). */
    static MappedSegment of(SealedMemory memory, SegmentLayout layout, String field) {
        if (memory.size() < layout.end()) {
            memory.release();
            throw OptError.precondition("%s: sealed segment %s holds %d bytes, but its offsets need %d for this model",
                    field, memory.name(), memory.size(), layout.end())
                    .withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE).withField(field + ".handoff_token");
        }
        try {
            memory.mapThrough(layout.end());
        } catch (java.io.IOException | RuntimeException e) {
            memory.release();
            throw OptError.precondition("%s: sealed segment %s cannot be mapped: %s", field, memory.name(),
                    e.getMessage()).withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE)
                    .withField(field + ".handoff_token");
        }
        return new MappedSegment(memory, layout);
    }

    @Override
    public String name() {
        return memory.name();
    }

    @Override
    public SegmentLayout layout() {
        return layout;
    }

    @Override
    public boolean isMapped() {
        return true;
    }

    @Override
    public void verify() {
        if (closed) {
            throw new IllegalStateException("segment " + name() + " was closed");
        }
        // Sealed against shrinking: it holds its size for as long as it is mapped.
    }

    @Override
    public <T> T using(Supplier<T> work) {
        return memory.reading(work);
    }

    @Override
    public ByteBuffer read(boolean weights, int tensor, long element, int count, ByteBuffer scratch) {
        long start = weights ? layout.weights(tensor) : layout.gradient(tensor);
        return memory.view(start + element * Float.BYTES, count * Float.BYTES);
    }

    @Override
    public ByteBuffer weightsTarget(int tensor, long element, int count, ByteBuffer scratch) {
        return read(true, tensor, element, count, scratch); // the view is where they go
    }

    @Override
    public void weightsFilled(int tensor, long element, ByteBuffer filled) {
        // written in place
    }

    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            memory.release();
        }
    }
}
