package dev.optsidecar.server.model;

import dev.optsidecar.server.OptError;
import dev.optsidecar.server.Parallel;
import dev.optsidecar.server.engine.DeviceGradientSource;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.WireType;

import java.nio.ByteBuffer;
import java.util.List;

/**
 * The gradients of one step as they arrive. Chunk bytes are copied straight into the sending
 * trainer's own preallocated gradient buffers; this object only tracks which elements have arrived and whether a
 * non-finite value was among them. Weights and optimizer state are untouched until the commit, so
 * abandoning an assembly changes nothing.
 */
public final class StepAssembly {
    /** Largest chunk payload a sender may use. */
    public static final int MAX_CHUNK_BYTES = 1 << 20;

    private final List<TensorEntry> tensors;
    private final ClientSession session;
    private final long stepId;
    private final Coverage[] coverage;
    private String nonFinite;
    private double sumOfSquares;

    StepAssembly(List<TensorEntry> tensors, ClientSession session, long stepId) {
        this.tensors = tensors;
        this.session = session;
        this.stepId = stepId;
        this.coverage = new Coverage[tensors.size()];
        for (int i = 0; i < coverage.length; i++) {
            coverage[i] = new Coverage(tensors.get(i).numel);
        }
    }

    public long stepId() {
        return stepId;
    }

    /** The client that sends this step; empty for an anonymous one. */
    public String clientId() {
        return session.clientId;
    }

    ClientSession session() {
        return session;
    }

    /**
     * Copies one chunk into the gradient buffer of tensor {@code tensor} at element {@code offset},
     * its elements of type {@code wire} widened to float32 on the way.
     *
     * @return a description of the first NaN or Inf in the chunk, or null if all values are finite
     */
    String add(int tensor, long offset, ByteBuffer data, WireType wire) {
        TensorEntry t = checkChunk(tensors, tensor, offset, data, "gradient", wire);
        long count = data.remaining() / wire.bytes;
        Coverage c = coverage[tensor];
        if (c.overlaps(offset, offset + count)) {
            throw OptError.invalid("chunk for %s: elements [%d, %d) overlap elements already sent in step %d",
                    t.describe(), offset, offset + count, stepId).withField("chunk.offset");
        }
        Ingest ingest = t.storage.writeGradient(session.handles[tensor], offset, data, wire);
        c.add(offset, offset + count);
        long bad = ingest.firstNonFinite();
        if (bad >= 0 && nonFinite == null) {
            nonFinite = "gradient of " + t.describe() + " has a non-finite value at element " + bad;
        }
        if (bad < 0) {
            sumOfSquares += ingest.sumOfSquares();
        }
        return bad >= 0 ? nonFinite : null;
    }

    /** A chunk of float32 elements to ingest: where it goes, and how many. */
    public record Piece(int tensor, long offset, int count) {}

    /** Reads a piece's bytes, on the thread that ingests it (so each thread may use its own buffer). */
    @FunctionalInterface
    public interface PieceReader {
        ByteBuffer read(Piece piece);
    }

    /**
     * Ingests float32 pieces on up to {@code threads} threads ({@code helpers} runs the others):
     * each is read and copied into the gradient buffer by whichever thread takes it, and the
     * figures are then folded in piece order, so the sum of squares and the first non-finite value
     * are those of {@link #add} called piece by piece. On a failure the first one (in the order
     * pieces were taken) is thrown once every thread has stopped; the assembly is then spoiled
     * (its buffers partly written), as after any failed chunk.
     *
     * @return the first non-finite value's description, or null
     */
    String addAll(List<Piece> pieces, PieceReader reader, java.util.concurrent.Executor helpers, int threads) {
        for (Piece p : pieces) {
            TensorEntry t = checkRange(p);
            if (coverage[p.tensor()].overlaps(p.offset(), p.offset() + p.count())) {
                throw OptError.invalid("%s: elements [%d, %d) overlap elements already sent in step %d",
                        t.describe(), p.offset(), p.offset() + p.count(), stepId).withField("chunk.offset");
            }
        }
        Ingest[] ingested = new Ingest[pieces.size()];
        Parallel.forEach(ingested.length, threads, helpers, i -> {
            Piece p = pieces.get(i);
            ByteBuffer data = reader.read(p);
            ingested[i] = tensors.get(p.tensor()).storage.writeGradient(session.handles[p.tensor()], p.offset(), data,
                    WireType.FLOAT32);
        });
        return fold(pieces, ingested);
    }

    /** Marks pieces received and folds their figures in piece order; returns the first non-finite one's description. */
    private String fold(List<Piece> pieces, Ingest[] ingested) {
        String first = null;
        for (int i = 0; i < ingested.length; i++) {
            Piece p = pieces.get(i);
            coverage[p.tensor()].add(p.offset(), p.offset() + p.count());
            long bad = ingested[i].firstNonFinite();
            if (bad >= 0 && nonFinite == null) {
                nonFinite = "gradient of " + tensors.get(p.tensor()).describe() + " has a non-finite value at element "
                        + bad;
            }
            if (bad >= 0 && first == null) {
                first = nonFinite;
            }
            if (bad < 0) {
                sumOfSquares += ingested[i].sumOfSquares();
            }
        }
        return first;
    }

    /**
     * Ingests every tensor of {@code tensors} whole from device memory through {@code source}
     * (CUDA IPC), then folds its pieces' figures in order as {@link #addAll} does, so the norm is
     * that of the same values sent as chunks of {@link #MAX_CHUNK_BYTES}.
     *
     * @return the first non-finite value's description, or null
     */
    String addFromDevice(List<Integer> tensors, DeviceGradientSource source) {
        List<DeviceGradientSource.Target> targets = new java.util.ArrayList<>();
        List<Piece> pieces = new java.util.ArrayList<>();
        int perPiece = MAX_CHUNK_BYTES / Float.BYTES;
        for (int tensor : tensors) {
            TensorEntry t = this.tensors.get(tensor);
            if (!coverage[tensor].isEmpty()) {
                throw OptError.invalid("%s: chunks were sent in step %d, whose gradients come from the device",
                        t.describe(), stepId).withField("chunk.offset");
            }
            targets.add(new DeviceGradientSource.Target(tensor, t.storage, session.handles[tensor]));
            for (long at = 0; at < t.numel; at += perPiece) {
                pieces.add(new Piece(tensor, at, (int) Math.min(perPiece, t.numel - at)));
            }
        }
        List<Ingest[]> perTensor = source.ingest(targets, perPiece);
        Ingest[] ingested = perTensor.stream().flatMap(java.util.Arrays::stream).toArray(Ingest[]::new);
        if (ingested.length != pieces.size()) {
            throw new IllegalStateException(ingested.length + " pieces ingested of " + pieces.size());
        }
        return fold(pieces, ingested);
    }

    private TensorEntry checkRange(Piece p) {
        if (p.tensor() < 0 || p.tensor() >= tensors.size()) {
            throw new IllegalArgumentException("piece of tensor " + p.tensor() + " outside the model's " + tensors.size());
        }
        TensorEntry t = tensors.get(p.tensor());
        if (p.count() <= 0 || p.count() > MAX_CHUNK_BYTES / Float.BYTES || p.offset() < 0
                || p.offset() > t.numel - p.count()) {
            throw new IllegalArgumentException("piece [" + p.offset() + ", +" + p.count() + ") of " + t.describe());
        }
        return t;
    }

    /** Validates a float32 chunk's tensor index, size and range against the model's tensors. */
    static TensorEntry checkChunk(List<TensorEntry> tensors, int tensor, long offset, ByteBuffer data, String what) {
        return checkChunk(tensors, tensor, offset, data, what, WireType.FLOAT32);
    }

    /** Validates a chunk of {@code wire} elements against the model's tensors. */
    static TensorEntry checkChunk(List<TensorEntry> tensors, int tensor, long offset, ByteBuffer data, String what,
                                  WireType wire) {
        if (tensor < 0 || tensor >= tensors.size()) {
            throw OptError.invalid("chunk.tensor: index %d out of range; the model has %d tensors",
                    Integer.toUnsignedLong(tensor), tensors.size());
        }
        TensorEntry t = tensors.get(tensor);
        int bytes = data.remaining();
        if (bytes == 0 || bytes % wire.bytes != 0) {
            throw OptError.invalid("chunk.data for %s: %d bytes is not a positive whole number of %s values",
                    t.describe(), bytes, wire.describe());
        }
        if (bytes > MAX_CHUNK_BYTES) {
            throw OptError.invalid("chunk.data for %s: %d bytes exceeds the %d-byte chunk limit",
                    t.describe(), bytes, MAX_CHUNK_BYTES);
        }
        long count = bytes / wire.bytes;
        if (offset < 0 || offset > t.numel - count) {
            throw OptError.invalid("chunk.offset for %s %s: elements [%s, %s) fall outside its %d elements",
                    what, t.describe(), Long.toUnsignedString(offset), Long.toUnsignedString(offset + count), t.numel);
        }
        return t;
    }

    /** The squared global L2 norm of the gradients received (finite chunks). */
    double sumOfSquares() {
        return sumOfSquares;
    }

    /** Sets the squared norm to the one recorded when a journaled step was first received. */
    void setSumOfSquares(double sumOfSquares) {
        this.sumOfSquares = sumOfSquares;
    }

    /** The first NaN or Inf seen in this step, or null. */
    String nonFinite() {
        return nonFinite;
    }

    /** Whether nothing has been received for any tensor. */
    boolean isEmpty() {
        for (Coverage c : coverage) {
            if (!c.isEmpty()) {
                return false;
            }
        }
        return true;
    }

    boolean received(int tensor) {
        return !coverage[tensor].isEmpty();
    }

    /** Fails with FAILED_PRECONDITION naming the first tensor (not in noGrad) whose gradient is incomplete. */
    void checkComplete(boolean[] noGrad) {
        for (int i = 0; i < coverage.length; i++) {
            if (noGrad[i]) {
                if (!coverage[i].isEmpty()) {
                    throw OptError.invalid("commit.no_grad lists %s, but chunks for it were sent in step %d",
                            tensors.get(i).describe(), stepId);
                }
                continue;
            }
            Coverage c = coverage[i];
            if (!c.isComplete()) {
                throw OptError.precondition(
                        "step %d: gradient of %s is incomplete: %d of %d elements missing, first missing element %d",
                        stepId, tensors.get(i).describe(), c.missing(), tensors.get(i).numel, c.firstMissing())
                        .withReason(OptError.Reason.INCOMPLETE_DATA);
            }
        }
    }
}
