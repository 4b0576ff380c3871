package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.Parallel;
import dev.optsidecar.server.engine.SegmentStepper;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.model.StepOptions;
import dev.optsidecar.server.model.ViewReader;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.StringJoiner;
import java.util.concurrent.ForkJoinPool;
import java.util.zip.CRC32C;

/**
 * Moves a step's data between a segment and the model through the paths chunks take: what is read
 * from the segment goes to {@link Model#addChunk} in 1 MiB slices (so the non-finite check, the
 * gradient norm, the journal and exactly-once see the same thing as with chunks), and a view is
 * written into the segment chunk by chunk as the {@link ViewReader} produces it. A file's pieces
 * go through a buffer per thread; a sealed segment's are views of its mapping, one copy each way.
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
    public static String ingest(Model model, StepAssembly assembly, Segment segment, List<Integer> noGrad,
                                boolean setsWeights) {
        segment.verify();
        List<StepAssembly.Piece> pieces = pieces(segment, new HashSet<>(noGrad));
        // A mapped segment's piece is a view of the client's memory, read once by the ingest (which
        // copies, then checks the copy), so values rewritten meanwhile cannot slip past the check.
        StepAssembly.PieceReader reader = piece ->
                segment.read(setsWeights, piece.tensor(), piece.offset(), piece.count(), SLICE.get());
        return segment.using(() -> model.addPieces(assembly, pieces, reader, ForkJoinPool.commonPool(), COPY_THREADS));
    }

    private static final int COPY_THREADS = Parallel.COPY_THREADS;

    /**
     * Applies a gradient step straight from a sealed segment where the model can ({@link
     * Model#commitFromSegment}): the engine reads the gradient and writes the new weights through
     * views of the mapping, piece by piece.
     *
     * @return the outcome, or null when the step must take the copying path (nothing changed)
     */
    public static Model.SegmentStepOutcome stepInPlace(Model model, StepAssembly assembly, Segment segment,
                                                       StepOptions options, Model.ResolvedView view) {
        if (!segment.isMapped()) {
            return null;
        }
        segment.verify();
        // A piece's program is its tensor's index: the model runs one program per tensor, in order.
        SegmentStepper.PieceViews views = new SegmentStepper.PieceViews() {
            @Override
            public ByteBuffer gradient(SegmentStepper.Piece piece) {
                return segment.read(false, piece.program(), piece.offset(), piece.count(), null);
            }

            @Override
            public ByteBuffer weights(SegmentStepper.Piece piece) {
                return segment.read(true, piece.program(), piece.offset(), piece.count(), null);
            }
        };
        return segment.using(() -> model.commitFromSegment(assembly, options, view, views));
    }

    /**
     * Checks the segment's weights regions against the CRC-32C of each piece the trainer recorded
     * ({@code StepCommit.weights_crc32c}: the pieces {@link #writeView} reports), on up to
     * {@link #COPY_THREADS} threads.
     *
     * @throws OptError INVALID_ARGUMENT for a wrong number of values; FAILED_PRECONDITION,
     *                  WEIGHTS_EDITED naming the tensors whose weights differ
     */
    public static void checkWeights(Segment segment, List<Integer> expected) {
        List<StepAssembly.Piece> pieces = pieces(segment, Set.of());
        if (expected.size() != pieces.size()) {
            throw OptError.invalid("commit.weights_crc32c: %d values, but the segment's weights are %d pieces of at"
                    + " most %d bytes", expected.size(), pieces.size(), StepAssembly.MAX_CHUNK_BYTES)
                    .withField("commit.weights_crc32c");
        }
        segment.verify();
        boolean[] differs = new boolean[segment.tensors()];
        segment.using(() -> {
            Parallel.forEach(pieces.size(), COPY_THREADS, ForkJoinPool.commonPool(), i -> {
                StepAssembly.Piece piece = pieces.get(i);
                ByteBuffer weights = segment.read(true, piece.tensor(), piece.offset(), piece.count(), SLICE.get());
                if (crc32c(weights) != expected.get(i)) {
                    differs[piece.tensor()] = true;
                }
            });
            return null;
        });
        StringJoiner edited = new StringJoiner(",");
        for (int t = 0; t < differs.length; t++) {
            if (differs[t]) {
                edited.add(Integer.toString(t));
            }
        }
        if (edited.length() > 0) {
            throw OptError.precondition("commit.weights_crc32c: the weights of tensors %s in segment %s are not what"
                    + " the trainer recorded: it wrote its parameters since; send them (a set-weights step) and"
                    + " step again", edited, segment.name())
                    .withReason(OptError.Reason.WEIGHTS_EDITED).withField("commit.weights_crc32c")
                    .with("tensors", edited.toString());
        }
    }

    /**
     * The tensors not in {@code skip} in pieces of {@link StepAssembly#MAX_CHUNK_BYTES}, tensor by
     * tensor: the pieces gradients are read in and views checksummed in.
     */
    private static List<StepAssembly.Piece> pieces(Segment segment, Set<Integer> skip) {
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
        return pieces;
    }

    /** The view written into a segment: its version, the CRC-32C of each 1 MiB piece written in order, its bytes. */
    public record WrittenView(long version, int[] crc32c, long bytes) {}

    /**
     * Writes {@code reader}'s view into the segment's weights regions, noting the CRC-32C of each
     * piece of {@link StepAssembly#MAX_CHUNK_BYTES} written (tensor by tensor; a trainer compares
     * them with its parameters' to notice its own edits without hashing them twice). A reader that
     * streams under the read lock has its pieces written on up to {@link #COPY_THREADS} threads,
     * each from the engine into that thread's direct buffer and from there into the file: one copy
     * on each side. Closes the reader.
     */
    public static WrittenView writeView(ViewReader reader, Segment segment) {
        try (reader) {
            segment.verify();
            return segment.using(() -> write(reader, segment));
        }
    }

    private static WrittenView write(ViewReader reader, Segment segment) {
        if (!reader.streams()) {
            List<Integer> sums = new ArrayList<>();
            long written = 0;
            while (reader.hasNext()) {
                WeightsChunk chunk = reader.next(StepAssembly.MAX_CHUNK_BYTES);
                ByteBuffer bytes = chunk.getData().asReadOnlyByteBuffer();
                sums.add(crc32c(bytes));
                written += bytes.remaining();
                int count = bytes.remaining() / Float.BYTES;
                ByteBuffer target = segment.weightsTarget(chunk.getTensor(), chunk.getOffset(), count, SLICE.get());
                target.put(bytes).flip();
                segment.weightsFilled(chunk.getTensor(), chunk.getOffset(), target);
            }
            return new WrittenView(reader.version(), sums.stream().mapToInt(Integer::intValue).toArray(), written);
        }
        List<ViewReader.Piece> pieces = reader.pieces(StepAssembly.MAX_CHUNK_BYTES);
        int[] sums = new int[pieces.size()];
        long written = 0;
        for (ViewReader.Piece piece : pieces) {
            written += (long) piece.count() * Float.BYTES;
        }
        Parallel.forEach(pieces.size(), COPY_THREADS, ForkJoinPool.commonPool(), i -> {
            ViewReader.Piece piece = pieces.get(i);
            ByteBuffer target = segment.weightsTarget(piece.tensor(), piece.offset(), piece.count(), SLICE.get());
            reader.readPiece(piece, target);
            target.flip();
            sums[i] = crc32c(target);
            segment.weightsFilled(piece.tensor(), piece.offset(), target);
        });
        return new WrittenView(reader.version(), sums, written);
    }

    private static int crc32c(ByteBuffer bytes) {
        CRC32C crc = new CRC32C();
        crc.update(bytes.duplicate());
        return (int) crc.getValue();
    }

    /**
     * One slice per thread, direct: a positional read or write moves it straight to or from the
     * file (a heap buffer would go through a temporary direct one); it is not allocated anew for
     * every step, and a view's piece stays in cache in it to be checksummed.
     */
    private static final ThreadLocal<ByteBuffer> SLICE =
            ThreadLocal.withInitial(() -> ByteBuffer.allocateDirect(StepAssembly.MAX_CHUNK_BYTES));
}
