package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.model.ViewReader;

import java.nio.ByteBuffer;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

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
     * or for a set-weights step its weights region, where the trainer's parameters live.
     *
     * @return the first non-finite value's description, or null
     */
    public static String ingest(Model model, StepAssembly assembly, SegmentFile segment, List<Integer> noGrad,
                                boolean setsWeights) {
        segment.verify();
        Set<Integer> skip = new HashSet<>(noGrad);
        // Direct: a positional read fills it straight from the file, with no bounce buffer.
        ByteBuffer slice = ByteBuffer.allocateDirect(StepAssembly.MAX_CHUNK_BYTES);
        String nonFinite = null;
        for (int t = 0; t < segment.tensors(); t++) {
            if (skip.contains(t)) {
                continue;
            }
            long numel = segment.numel(t);
            for (long at = 0; at < numel; ) {
                int count = (int) Math.min(StepAssembly.MAX_CHUNK_BYTES / Float.BYTES, numel - at);
                slice.clear().limit(count * Float.BYTES);
                if (setsWeights) {
                    segment.readWeights(t, at, slice);
                } else {
                    segment.readGradient(t, at, slice);
                }
                slice.flip();
                String bad = model.addChunk(assembly, t, at, slice, WireType.FLOAT32); // a segment holds float32
                if (bad != null && nonFinite == null) {
                    nonFinite = bad;
                }
                at += count;
            }
        }
        return nonFinite;
    }

    /** Writes {@code reader}'s view into the segment's weights regions; returns its version. Closes the reader. */
    public static long writeView(ViewReader reader, SegmentFile segment) {
        return writeView(reader, segment, bytes -> { });
    }

    /** As {@link #writeView(ViewReader, SegmentFile)}, telling {@code written} the bytes of each piece written. */
    public static long writeView(ViewReader reader, SegmentFile segment, java.util.function.LongConsumer written) {
        try (reader) {
            segment.verify();
            while (reader.hasNext()) {
                WeightsChunk chunk = reader.next(StepAssembly.MAX_CHUNK_BYTES);
                segment.writeWeights(chunk.getTensor(), chunk.getOffset(), chunk.getData().asReadOnlyByteBuffer());
                written.accept(chunk.getData().size());
            }
            return reader.version();
        }
    }
}
