package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.model.ViewReader;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ForkJoinPool;
import java.util.zip.CRC32C;

/**
 * Moves a step's data between a segment and the model through the paths chunks take: what is read
 * from the segment goes to {@link Model#addChunk} in 1 MiB slices (so the non-finite check, the
 * gradient norm, the journal and exactly-once see the same thing as with chunks), and a view is
 * written into the segment chunk by chunk as the {@link ViewReader} produces it.
 */
public final class SegmentTransfer {
    private SegmentTransfer() {}

    /**
     * Reads every tensor not in {@code noGrad} from the segment into {@code assembly}: its gradient,
     * or for a set-weights step its weights region, where the trainer's parameters live. The 1 MiB
     * pieces are read and ingested on up to {@link #COPY_THREADS} threads, with the same figures
     * (norm, first non-finite value) as chunks sent in that order.
     *
     * @return the first non-finite value's description, or null
     */
    public static String ingest(Model model, StepAssembly assembly, SegmentFile segment, List<Integer> noGrad,
                                boolean setsWeights) {
        segment.verify();
        Set<Integer> skip = new HashSet<>(noGrad);
        List<StepAssembly.Piece> pieces = new ArrayList<>();
        for (int t = 0; t < segment.tensors(); t++) {
            if (skip.contains(t)) {
                continue;
            }
            long numel = segment.numel(t);
            for (long at = 0; at < numel; ) {
                int count = (int) Math.min(StepAssembly.MAX_CHUNK_BYTES / Float.BYTES, numel - at);
                pieces.add(new StepAssembly.Piece(t, at, count));
                at += count;
            }
        }
        StepAssembly.PieceReader reader = piece -> {
            ByteBuffer slice = SLICE.get();
            slice.clear().limit(piece.count() * Float.BYTES);
            if (setsWeights) {
                segment.readWeights(piece.tensor(), piece.offset(), slice);
            } else {
                segment.readGradient(piece.tensor(), piece.offset(), slice);
            }
            return slice.flip();
        };
        return model.addPieces(assembly, pieces, reader, ForkJoinPool.commonPool(), COPY_THREADS);
    }

    /**
     * Threads that copy a step's pieces in: a copy is bound by memory bandwidth, which a few
     * cores saturate; the calling thread is one of them.
     */
    static final int COPY_THREADS = Math.max(1, Math.min(4, ForkJoinPool.getCommonPoolParallelism() + 1));

    /** The view written into a segment: its version and each tensor's CRC-32C, in tensor order. */
    public record WrittenView(long version, int[] crc32c) {}

    /**
     * Writes {@code reader}'s view into the segment's weights regions, noting each tensor's CRC-32C
     * of the bytes written (a trainer compares it with its parameters' to notice its own edits
     * without hashing them twice). A reader that streams under the read lock writes each piece from
     * the engine into a direct buffer and from there into the file: one copy on each side. Closes
     * the reader.
     */
    public static WrittenView writeView(ViewReader reader, SegmentFile segment) {
        try (reader) {
            segment.verify();
            CRC32C[] sums = new CRC32C[segment.tensors()];
            if (reader.streams()) {
                ByteBuffer slice = SLICE.get();
                while (reader.hasNext()) {
                    slice.clear();
                    ViewReader.Piece piece = reader.nextInto(slice);
                    write(segment, sums, piece.tensor(), piece.offset(), slice);
                }
            } else {
                while (reader.hasNext()) {
                    WeightsChunk chunk = reader.next(StepAssembly.MAX_CHUNK_BYTES);
                    write(segment, sums, chunk.getTensor(), chunk.getOffset(), chunk.getData().asReadOnlyByteBuffer());
                }
            }
            int[] crc = new int[sums.length];
            for (int t = 0; t < sums.length; t++) {
                crc[t] = sums[t] == null ? 0 : (int) sums[t].getValue();
            }
            return new WrittenView(reader.version(), crc);
        }
    }

    private static void write(SegmentFile segment, CRC32C[] sums, int tensor, long offset, ByteBuffer bytes) {
        if (sums[tensor] == null) {
            sums[tensor] = new CRC32C();
        }
        sums[tensor].update(bytes.duplicate()); // pieces arrive in order within each tensor
        segment.writeWeights(tensor, offset, bytes);
    }

    /**
     * One slice per thread, direct: a positional read or write moves it straight to or from the
     * file (a heap buffer would go through a temporary direct one), and it is not allocated anew
     * for every step.
     */
    private static final ThreadLocal<ByteBuffer> SLICE =
            ThreadLocal.withInitial(() -> ByteBuffer.allocateDirect(StepAssembly.MAX_CHUNK_BYTES));
}
