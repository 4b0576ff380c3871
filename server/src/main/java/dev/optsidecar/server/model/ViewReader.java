package dev.optsidecar.server.model;

import com.google.protobuf.UnsafeByteOperations;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.Parallel;
import dev.optsidecar.server.engine.DeviceViewTarget;
import dev.optsidecar.server.engine.WireType;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * One view of a model as a sequence of chunks, tensor by tensor, all of one version. Normally the
 * chunks are copied out at once, under the model's read lock, which is then released, so a slow
 * receiver never holds up steps; the copy's bytes count against the memory limit until the
 * reader is closed. When the limit leaves no room for a copy, the reader holds the read lock and
 * produces each chunk as it is sent. Each chunk's bytes are written once into a fresh array that
 * the message wraps without a further copy, as float32 or rounded to the 16-bit type the reader asks
 * for in that same copy.
 */
public final class ViewReader implements AutoCloseable {
    private final Model model;
    private final View view;
    private final ViewSource source;
    private final WireType wire;
    private final List<TensorEntry> tensors;
    private final long version;
    private volatile long stamp;
    private int tensor;
    private long offset;
    private Published published;
    private int nextChunk;
    private boolean closed;

    /** Chunks copied out once and shared by every reader of them; the memory is released by the last. */
    static final class Published {
        final List<WeightsChunk> chunks;
        final long bytes;
        final AtomicInteger readers = new AtomicInteger();

        Published(List<WeightsChunk> chunks, long bytes) {
            this.chunks = chunks;
            this.bytes = bytes;
        }

        /** Takes a hold on the copy; each is given back by {@link #release}. */
        void retain() {
            readers.incrementAndGet();
        }

        /** Gives back one hold; the last gives the copy's memory back to the limit. */
        void release(Model model) {
            if (readers.decrementAndGet() == 0) {
                model.releaseTransient(bytes);
            }
        }
    }

    /** Reads under the read lock {@code stamp}, which the reader releases (at once if it can copy the view). */
    ViewReader(Model model, Model.ResolvedView resolved, List<TensorEntry> tensors, long version, long stamp) {
        this.model = model;
        this.view = resolved.label();
        this.source = resolved.source();
        this.wire = resolved.wire();
        this.tensors = tensors;
        this.version = version;
        this.stamp = stamp;
        Published copy = resolved.inPlace() ? null : copyOut(model, resolved, tensors, version);
        if (copy != null) {
            copy.retain();
            published = copy;
            model.unlockRead(stamp);
            this.stamp = 0;
        }
    }

    /** Another reader of chunks already copied out. */
    ViewReader(Model model, View view, long version, Published shared) {
        this.model = model;
        this.view = view;
        this.source = null;
        this.wire = null;
        this.tensors = List.of();
        this.version = version;
        shared.retain();
        this.published = shared;
    }

    /** Copies a view out, if the memory limit has room; the caller holds the read lock. */
    static Published copyOut(Model model, Model.ResolvedView resolved, List<TensorEntry> tensors, long version) {
        WireType wire = resolved.wire();
        long bytes = 0;
        for (TensorEntry t : tensors) {
            bytes += t.numel * wire.bytes;
        }
        if (!model.reserveTransient(bytes)) {
            return null;
        }
        record Piece(TensorEntry tensor, long offset, int count) {}
        List<Piece> pieces = new ArrayList<>();
        for (TensorEntry t : tensors) {
            for (long at = 0; at < t.numel; ) {
                int count = (int) Math.min(StepAssembly.MAX_CHUNK_BYTES / wire.bytes, t.numel - at);
                pieces.add(new Piece(t, at, count));
                at += count;
            }
        }
        // On a few threads: the copy (and narrowing) holds the read lock, and is the bulk of a
        // chunked step's time after the optimizer's own pass.
        WeightsChunk[] chunks = new WeightsChunk[pieces.size()];
        Parallel.forEach(chunks.length, Parallel.COPY_THREADS, ForkJoinPool.commonPool(), i -> {
            Piece p = pieces.get(i);
            chunks[i] = chunk(resolved.label(), resolved.source(), wire, p.tensor(), version, p.offset(), p.count());
        });
        return new Published(List.of(chunks), bytes);
    }

    /** The chunks copied out, to share with more readers; null when this reader streams under the lock. */
    Published published() {
        return published;
    }

    private static WeightsChunk chunk(View view, ViewSource source, WireType wire, TensorEntry t, long version,
                                      long offset, int count) {
        byte[] bytes = new byte[count * wire.bytes];
        source.read(t, offset, count, ByteBuffer.wrap(bytes), wire);
        return WeightsChunk.newBuilder()
                .setView(view)
                .setVersion(version)
                .setTensor(t.index)
                .setOffset(offset)
                .setData(UnsafeByteOperations.unsafeWrap(bytes))
                .build();
    }

    public View view() {
        return view;
    }

    public long version() {
        return version;
    }

    public synchronized boolean hasNext() {
        if (closed) {
            return false;
        }
        if (published != null) {
            return nextChunk < published.chunks.size();
        }
        return stamp != 0 && tensor < tensors.size();
    }

    /** The next chunk, of at most {@code maxBytes} bytes of data (copied chunks are at most 1 MiB). */
    public synchronized WeightsChunk next(int maxBytes) {
        if (published != null) {
            return published.chunks.get(nextChunk++);
        }
        TensorEntry t = tensors.get(tensor);
        int count = (int) Math.min(maxBytes / wire.bytes, t.numel - offset);
        WeightsChunk chunk = chunk(view, source, wire, t, version, offset, count);
        offset += count;
        if (offset == t.numel) {
            tensor++;
            offset = 0;
        }
        return chunk;
    }

    /** A stretch of one tensor of the view: tensor {@code tensor}'s elements [offset, offset + count). */
    public record Piece(int tensor, long offset, int count) {}

    /**
     * The view cut into pieces of at most {@code maxBytes} bytes, tensor by tensor, for a reader
     * that streams under the read lock ({@link #streams}); {@link #readPiece} reads each, from any
     * thread, until the reader is closed.
     */
    public synchronized List<Piece> pieces(int maxBytes) {
        if (published != null) {
            throw new IllegalStateException("the view was copied out: read its chunks with next()");
        }
        List<Piece> pieces = new ArrayList<>();
        for (TensorEntry t : tensors) {
            for (long at = 0; at < t.numel; ) {
                int count = (int) Math.min(maxBytes / wire.bytes, t.numel - at);
                pieces.add(new Piece(t.index, at, count));
                at += count;
            }
        }
        return pieces;
    }

    /** Writes {@code piece}'s values into {@code dst} from its position (see {@link #pieces}). */
    public void readPiece(Piece piece, ByteBuffer dst) {
        if (stamp == 0) {
            throw new IllegalStateException("the reader holds no read lock");
        }
        source.read(model.tensors().get(piece.tensor()), piece.offset(), piece.count(), dst, wire);
    }

    /**
     * Writes the whole view into {@code target} on the device, tensor by tensor, for a reader that
     * streams under the read lock ({@link #streams}); the target says when the writes are done.
     */
    public void writeTo(DeviceViewTarget target) {
        if (stamp == 0) {
            throw new IllegalStateException("the reader holds no read lock");
        }
        for (TensorEntry t : tensors) {
            source.write(t, target);
        }
    }

    /** Whether this reader produces each piece as it is read, under the read lock (else from a copy). */
    public synchronized boolean streams() {
        return published == null;
    }

    /** Releases the read lock or the copy; safe to call more than once. */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (stamp != 0) {
            model.unlockRead(stamp);
            stamp = 0;
        }
        if (published != null) {
            published.release(model);
        }
    }
}
