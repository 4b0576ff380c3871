package dev.optsidecar.server.model;

import dev.optsidecar.server.OptError;

import java.nio.ByteBuffer;

/**
 * A model being registered: its memory is allocated and its initial weights are arriving. It
 * becomes visible only when every element has arrived; if registration fails or is abandoned,
 * {@link #discard} frees the memory and nothing is left behind.
 */
public final class PendingModel {
    private final Model model;
    private final ModelRegistry registry;
    private final Coverage[] coverage;
    private boolean done;

    PendingModel(Model model, ModelRegistry registry) {
        this.model = model;
        this.registry = registry;
        this.coverage = new Coverage[model.tensorCount()];
        for (int i = 0; i < coverage.length; i++) {
            coverage[i] = new Coverage(model.tensors().get(i).numel);
        }
    }

    public void addWeights(int tensor, long offset, ByteBuffer data) {
        TensorEntry t = StepAssembly.checkChunk(model.tensors(), tensor, offset, data, "initial weights of");
        long count = data.remaining() / Float.BYTES;
        if (coverage[tensor].overlaps(offset, offset + count)) {
            throw OptError.invalid("weights chunk for %s: elements [%d, %d) were already sent",
                    t.describe(), offset, offset + count);
        }
        t.storage.writeParams(offset, data);
        coverage[tensor].add(offset, offset + count);
    }

    /** Checks that every element arrived and publishes the model under its name. */
    public Model publish() {
        for (int i = 0; i < coverage.length; i++) {
            if (!coverage[i].isComplete()) {
                TensorEntry t = model.tensors().get(i);
                throw OptError.precondition("initial weights of %s are incomplete: %d of %d elements missing,"
                        + " first missing element %d", t.describe(), coverage[i].missing(), t.numel,
                        coverage[i].firstMissing());
            }
        }
        registry.publish(model);
        done = true;
        return model;
    }

    /** Frees the memory of a model that will not be published. */
    public void discard() {
        if (!done) {
            done = true;
            model.delete();
            registry.release(model.memoryBytes());
        }
    }
}
