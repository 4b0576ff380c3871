package dev.optsidecar.server.model;

import com.google.protobuf.UnsafeByteOperations;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.engine.ViewChunks;
import dev.optsidecar.server.engine.WireType;

import java.util.ArrayList;
import java.util.List;

/**
 * The train weights a step's reply sends, written by the step's own pass (an engine that
 * {@linkplain dev.optsidecar.server.engine.Engine#writesWeightChunks can}): each tile's new θ goes
 * into the reply's chunks, rounded to the wire type, while it is still in cache, instead of a
 * second pass over every tensor after the step. The chunks are those {@link ViewReader} would have
 * copied out, byte for byte, and count against the memory limit the same way.
 */
final class ReplyWeights {
    private final Model model;
    private final ViewChunks[] byTensor;
    private final long bytes;
    private boolean held = true;

    private ReplyWeights(Model model, ViewChunks[] byTensor, long bytes) {
        this.model = model;
        this.byTensor = byTensor;
        this.bytes = bytes;
    }

    /**
     * Chunks for a step to fill, or null where the reply reads its weights after the step: a view
     * other than the train weights, float32 chunks (a plain copy after the step measured as fast:
     * what rounding in the pass saves is a second read of θ and the rounding's own passes), a
     * tensor the step leaves out (it would have no pass), an engine that cannot, or no room under
     * the memory limit. Under the write lock.
     */
    static ReplyWeights reserve(Model model, Model.ResolvedView view, boolean[] skip) {
        if (view == null || view.source() != ViewSource.TRAIN || view.inPlace() || view.wire() == WireType.FLOAT32
                || !model.engine().writesWeightChunks()) {
            return null;
        }
        long bytes = 0;
        for (TensorEntry t : model.tensors()) {
            if (skip[t.index]) {
                return null;
            }
            bytes += t.numel * view.wire().bytes;
        }
        if (!model.reserveTransient(bytes)) {
            return null;
        }
        int perChunk = StepAssembly.MAX_CHUNK_BYTES / view.wire().bytes;
        ViewChunks[] byTensor = new ViewChunks[model.tensors().size()];
        for (TensorEntry t : model.tensors()) {
            byTensor[t.index] = new ViewChunks(t.numel, view.wire(), perChunk);
        }
        return new ReplyWeights(model, byTensor, bytes);
    }

    /** Where the step writes tensor {@code index}'s new θ. */
    ViewChunks forTensor(int index) {
        return byTensor[index];
    }

    /**
     * The chunks as a copy readers share, labelled {@code view} and {@code version}, or null when
     * the step did not write them all (it was skipped, or failed): the memory is then given back.
     */
    ViewReader.Published publish(View view, long version) {
        List<WeightsChunk> chunks = new ArrayList<>();
        for (int tensor = 0; tensor < byTensor.length; tensor++) {
            ViewChunks c = byTensor[tensor];
            if (!c.complete()) {
                release();
                return null;
            }
            for (int i = 0; i < c.count(); i++) {
                chunks.add(WeightsChunk.newBuilder()
                        .setView(view)
                        .setVersion(version)
                        .setTensor(tensor)
                        .setOffset(c.offset(i))
                        .setData(UnsafeByteOperations.unsafeWrap(c.array(i)))
                        .build());
            }
        }
        held = false;
        return new ViewReader.Published(List.copyOf(chunks), bytes);
    }

    /** Gives the reserved memory back, unless {@link #publish} handed it on; safe to call again. */
    void release() {
        if (held) {
            held = false;
            model.releaseTransient(bytes);
        }
    }
}
