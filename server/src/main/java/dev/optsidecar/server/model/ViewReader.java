package dev.optsidecar.server.model;

import com.google.protobuf.UnsafeByteOperations;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.WeightsChunk;

import java.nio.ByteBuffer;
import java.util.List;

/**
 * Reads one view of a model as a sequence of chunks, tensor by tensor, holding the model's read
 * lock until closed, so that every chunk belongs to the same version. Each chunk's bytes are
 * written once into a fresh array that the message wraps without a further copy.
 */
public final class ViewReader implements AutoCloseable {
    private final Model model;
    private final View view;
    private final ViewSource source;
    private final List<TensorEntry> tensors;
    private final long version;
    private long stamp;
    private int tensor;
    private long offset;

    ViewReader(Model model, View view, ViewSource source, List<TensorEntry> tensors, long version, long stamp) {
        this.model = model;
        this.view = view;
        this.source = source;
        this.tensors = tensors;
        this.version = version;
        this.stamp = stamp;
    }

    public View view() {
        return view;
    }

    public long version() {
        return version;
    }

    public boolean hasNext() {
        return stamp != 0 && tensor < tensors.size();
    }

    /** The next chunk, of at most {@code maxBytes} bytes of data. */
    public WeightsChunk next(int maxBytes) {
        TensorEntry t = tensors.get(tensor);
        int count = (int) Math.min(maxBytes / Float.BYTES, t.numel - offset);
        byte[] bytes = new byte[count * Float.BYTES];
        source.read(t, offset, count, ByteBuffer.wrap(bytes));
        WeightsChunk chunk = WeightsChunk.newBuilder()
                .setView(view)
                .setVersion(version)
                .setTensor(t.index)
                .setOffset(offset)
                .setData(UnsafeByteOperations.unsafeWrap(bytes))
                .build();
        offset += count;
        if (offset == t.numel) {
            tensor++;
            offset = 0;
        }
        return chunk;
    }

    /** Releases the read lock; safe to call more than once. */
    @Override
    public synchronized void close() {
        if (stamp != 0) {
            model.unlockRead(stamp);
            stamp = 0;
        }
    }
}
