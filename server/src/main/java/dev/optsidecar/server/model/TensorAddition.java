package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.VersionContributions;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.optim.EmaShadow;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * Tensors being added to a live model as a new parameter group (AddTensors, torch's
 * add_param_group). The extended model is allocated when the request's spec arrives, counted
 * against the memory limit and as a pending registration, and receives the new tensors' initial
 * weights. Once they are complete, it takes the model's weights, state, counters, clients' sequence
 * numbers and History under the model's write lock and takes its place, so no step falls between
 * the copy and the swap. The new tensors start with fresh state, as in a new registration.
 */
public final class TensorAddition {
    private final ModelRegistry registry;
    private final Model previous;
    private final PendingModel pending;
    private final int firstNew;
    private final String group;

    /** Makes the extended model durable before it takes the model's place, and undoes that if it does not. */
    public interface Durability {
        /** Without a state directory: nothing to write. */
        Durability NONE = new Durability() {
            @Override
            public void adopt(Model extended) {}

            @Override
            public void abandon(Model extended) {}
        };

        void adopt(Model extended);

        void abandon(Model extended);
    }

    private TensorAddition(ModelRegistry registry, Model previous, PendingModel pending, String group) {
        this.registry = registry;
        this.previous = previous;
        this.pending = pending;
        this.firstNew = previous.tensorCount();
        this.group = group;
    }

    /** Validates the request against the model, field by field, and allocates the extended model. */
    public static TensorAddition prepare(ModelRegistry registry, AddTensorsSpec request) {
        Model previous = registry.get(request.getModel(), "spec.model");
        ModelSpec extended = ExtendedSpec.of(previous, request, registry.limits());
        return new TensorAddition(registry, previous, registry.prepare(extended, true), request.getGroup().getName());
    }

    /** The model this addition extends. */
    public Model previous() {
        return previous;
    }

    /** The new group's name. */
    public String group() {
        return group;
    }

    /** Copies a chunk of a new tensor's initial weights (indexed as in the extended model) into place. */
    public void addWeights(int tensor, long offset, ByteBuffer data) {
        if (tensor >= 0 && tensor < firstNew) {
            throw OptError.invalid("chunk.tensor: index %d names a tensor model '%s' has already; the new tensors'"
                    + " weights are indexed from %d", tensor, Echo.of(previous.name()), firstNew);
        }
        pending.addWeights(tensor, offset, data);
    }

    /**
     * Builds the extended model from the model as it is now and puts it in its place; the model is
     * retired (its open streams are told MODEL_CHANGED). Refused while a sync step's contributions
     * wait; nothing changes when it fails.
     */
    public Model publish(Durability durability) {
        Model extended = pending.model();
        try {
            for (int i = firstNew; i < extended.tensorCount(); i++) {
                pending.requireWeights(i);
            }
        } catch (RuntimeException e) {
            pending.discard();
            throw e;
        }
        boolean adopted = false;
        long stamp = previous.writeLock();
        try {
            Model current = registry.get(previous.name(), "spec.model"); // NOT_FOUND once deleted
            if (current != previous) {
                throw ModelRegistry.changedMeanwhile(previous.name());
            }
            previous.checkLive();
            if (!previous.isAcceptingSteps()) { // a shutdown has begun: its snapshot covers the model as it is
                throw OptError.unavailable("spec.model: model '%s': the server is shutting down; send the tensors"
                        + " again when it is back", Echo.of(previous.name())).with("model", Echo.of(previous.name()));
            }
            if (previous.syncStepWaiting()) {
                throw OptError.precondition("spec.model: model '%s' has a sync step waiting for its trainers'"
                        + " contributions; add tensors between steps", Echo.of(previous.name()))
                        .with("model", Echo.of(previous.name()));
            }
            takeOver();
            durability.adopt(extended);
            adopted = true;
            pending.publishInPlaceOf(previous);
            return extended;
        } catch (RuntimeException | Error e) {
            if (adopted) {
                durability.abandon(extended);
            }
            pending.discard();
            throw e;
        } finally {
            previous.unlockWrite(stamp);
        }
    }

    /** Gives back what the extended model holds, when the request fails or is abandoned. */
    public void discard() {
        pending.discard();
    }

    /**
     * Copies the model's weights, state slots, counters, clients, History and coordination counters
     * into the extended model. Under the model's write lock.
     */
    private void takeOver() {
        Model extended = pending.model();
        ModelState.Builder state = ModelDescription.of(previous).getState().toBuilder();
        for (int i = firstNew; i < extended.tensorCount(); i++) {
            state.addTensorSteps(0); // fresh state: bias corrections and Schedule-Free's z start at their first step
        }
        pending.useState(state.build());
        ByteBuffer chunk = ByteBuffer.allocate(StepAssembly.MAX_CHUNK_BYTES);
        for (TensorEntry from : previous.tensors()) {
            ModelLoader.copy(from.numel, chunk, (offset, count, dst) -> from.storage.readParams(offset, count, dst),
                    (offset, data) -> pending.addWeights(from.index, offset, data));
            for (int s = 0; s < from.slots.size(); s++) {
                int slot = s;
                ModelLoader.copy(from.numel, chunk, (offset, count, dst) -> from.storage.readSlot(slot, offset, count, dst),
                        (offset, data) -> pending.addState(from.index, from.slots.get(slot), offset, data));
            }
        }
        pending.complete(); // the counters; Lookahead's slow weights of the new tensors start as their weights
        for (VersionContributions v : previous.history().all()) {
            extended.history().record(v.getVersion(), v.getContributionsList());
        }
        previous.figureHistory().copyTo(extended.figureHistory());
        extended.status().copyFrom(previous.status());
        startShadows(extended);
    }

    /** EMA shadows of the new tensors start as their initial weights, as a first update would set them. */
    private void startShadows(Model extended) {
        List<EmaShadow> ema = extended.training().ema();
        List<TensorProgram> programs = new ArrayList<>();
        for (TensorEntry t : extended.tensors().subList(firstNew, extended.tensorCount())) {
            List<dev.optsidecar.server.engine.kernel.KernelCall> calls = new ArrayList<>();
            for (int i = 0; i < ema.size(); i++) {
                calls.add(ema.get(i).update(0, t.slot(EmaShadow.slotName(i))));
            }
            if (!calls.isEmpty()) {
                programs.add(new TensorProgram(t.storage, calls));
            }
        }
        extended.engine().run(programs);
    }
}
