package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Lookahead;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A model being registered: its memory is allocated and its initial weights (and, when restoring a
 * saved run, its state buffers) are arriving. It becomes visible only when every element has
 * arrived; if registration fails or is abandoned, {@link #discard} frees the memory and nothing is
 * left behind.
 */
public final class PendingModel {
    private final Model model;
    private final ModelRegistry registry;
    private ModelState state;
    private final Coverage[] weights;
    /** Per tensor: state slot index to the coverage of the chunks sent for it. */
    private final List<Map<Integer, Coverage>> slots = new ArrayList<>();
    private boolean done;
    private boolean completed;

    PendingModel(Model model, ModelRegistry registry, ModelState state) {
        this.model = model;
        this.registry = registry;
        this.state = state;
        this.weights = new Coverage[model.tensorCount()];
        for (int i = 0; i < weights.length; i++) {
            weights[i] = new Coverage(model.tensors().get(i).numel);
            slots.add(new HashMap<>());
        }
    }

    public void addWeights(int tensor, long offset, ByteBuffer data) {
        TensorEntry t = StepAssembly.checkChunk(model.tensors(), tensor, offset, data, "initial weights of");
        long count = data.remaining() / Float.BYTES;
        if (weights[tensor].overlaps(offset, offset + count)) {
            throw OptError.invalid("weights chunk for %s: elements [%d, %d) were already sent",
                    t.describe(), offset, offset + count).withField("weights.offset");
        }
        t.storage.writeParams(offset, data);
        weights[tensor].add(offset, offset + count);
    }

    /** Copies a chunk of a saved state buffer into place. */
    public void addState(int tensor, String slot, long offset, ByteBuffer data) {
        if (state == null) {
            throw OptError.invalid("state: state chunks need spec.state (the saved run's counters)");
        }
        TensorEntry t = StepAssembly.checkChunk(model.tensors(), tensor, offset, data, "state of");
        int index = t.slot(slot);
        if (index < 0) {
            throw OptError.invalid("state.slot: %s has no state slot '%s'; its slots: %s", t.describe(), Echo.of(slot),
                    String.join(", ", t.slots));
        }
        long count = data.remaining() / Float.BYTES;
        Coverage c = slots.get(tensor).computeIfAbsent(index, i -> new Coverage(t.numel));
        if (c.overlaps(offset, offset + count)) {
            throw OptError.invalid("state chunk for %s slot '%s': elements [%d, %d) were already sent",
                    t.describe(), slot, offset, offset + count).withField("state.offset");
        }
        t.storage.writeSlot(index, offset, data);
        c.add(offset, offset + count);
    }

    /**
     * Sets the saved run's counters when they are known only after the model was built: AddTensors
     * captures them from the live model it extends, at the moment it takes its place.
     */
    void useState(ModelState saved) {
        this.state = saved;
    }

    /** INCOMPLETE_DATA unless every element of tensor {@code index}'s initial weights has arrived. */
    void requireWeights(int index) {
        requireComplete(weights[index], "initial weights of " + model.tensors().get(index).describe() + " are");
    }

    /** The model being built: steps may be replayed on it after {@link #complete} and before it is published. */
    public Model model() {
        return model;
    }

    /** Checks that every element arrived and applies the saved counters; idempotent. */
    public void complete() {
        if (completed) {
            return;
        }
        for (int i = 0; i < weights.length; i++) {
            TensorEntry t = model.tensors().get(i);
            requireComplete(weights[i], "initial weights of " + t.describe() + " are");
            for (Map.Entry<Integer, Coverage> e : slots.get(i).entrySet()) {
                requireComplete(e.getValue(), "state slot '" + t.slots.get(e.getKey()) + "' of " + t.describe() + " is");
            }
        }
        if (state != null) {
            restoreCounters();
        }
        initialiseWrappers();
        completed = true;
    }

    /** Completes the model and makes it visible under its name. */
    public Model publish() {
        complete();
        registry.publish(model);
        done = true;
        registry.registrationEnded();
        return model;
    }

    /** Completes the model and makes it visible, replacing (and freeing) a model of that name if there is one. */
    public Model publishReplacing() {
        complete();
        registry.replace(model);
        done = true;
        registry.registrationEnded();
        return model;
    }

    /**
     * Completes the model and makes it visible in place of {@code previous}, which it extends; the
     * caller holds {@code previous}'s write lock and retires it. ABORTED (MODEL_CHANGED) when
     * {@code previous} is no longer the model of that name.
     */
    void publishInPlaceOf(Model previous) {
        complete();
        registry.swap(previous, model);
        done = true;
        registry.registrationEnded();
    }

    private static void requireComplete(Coverage c, String what) {
        if (!c.isComplete()) {
            throw OptError.precondition("%s incomplete: %d of %d elements missing, first missing element %d",
                    what, c.missing(), c.numel(), c.firstMissing()).withReason(OptError.Reason.INCOMPLETE_DATA);
        }
    }

    /** Sets the saved run's counters; weights saved at Schedule-Free's eval point become y. */
    private void restoreCounters() {
        List<TensorEntry> tensors = model.tensors();
        if (state.getTensorStepsCount() != 0 && state.getTensorStepsCount() != tensors.size()) {
            throw OptError.invalid("spec.state.tensor_steps: %d entries for %d tensors",
                    state.getTensorStepsCount(), tensors.size());
        }
        if (state.getEmaUpdatesCount() != 0 && state.getEmaUpdatesCount() != model.emaUpdates.length) {
            throw OptError.invalid("spec.state.ema_updates: %d entries for %d EMA shadows",
                    state.getEmaUpdatesCount(), model.emaUpdates.length);
        }
        for (GroupCounters saved : state.getGroupsList()) {
            GroupState g = model.groups().stream().filter(x -> x.name.equals(saved.getGroup())).findFirst()
                    .orElseThrow(() -> OptError.invalid("spec.state.groups: model '%s' has no group '%s'",
                            Echo.of(model.name()), Echo.of(saved.getGroup())));
            if (!(saved.getLr() >= 0) || Double.isInfinite(saved.getLr())) {
                throw OptError.invalid("spec.state.groups[%s].lr: must be finite and >= 0", Echo.of(g.name));
            }
            if (saved.hasHyperparameters()) {
                restoreHyperparameters(g, saved.getHyperparameters());
            }
            g.baseLr = saved.getLr();
            g.scalars = restoredScalars(g, saved.getScalarsMap());
        }
        for (int i = 0; i < state.getTensorStepsCount(); i++) {
            tensors.get(i).steps = state.getTensorSteps(i);
        }
        for (int i = 0; i < state.getEmaUpdatesCount(); i++) {
            model.emaUpdates[i] = state.getEmaUpdates(i);
        }
        int maxIdBytes = registry.limits().maxClientIdBytes();
        for (int i = 0; i < state.getClientsCount(); i++) {
            int idBytes = state.getClients(i).getClientId().getBytes(java.nio.charset.StandardCharsets.UTF_8).length;
            if (idBytes > maxIdBytes) {
                throw OptError.invalid("spec.state.clients[%d].client_id: %d bytes, longer than the server's limit of"
                        + " %d (raise it with --max-client-id-bytes)", i, idBytes, maxIdBytes);
            }
        }
        model.ledger().restore(state.getClientsList());
        model.scheduleStep = state.getScheduleStep();
        model.lookaheadStep = state.getLookaheadStep();
        model.setVersion(state.getVersion());
        ViewKind saved = state.getWeightsView();
        if (saved == ViewKind.VIEW_EVAL) {
            KernelCall toTrain = model.groups().get(0).algorithm.trainFromEval();
            if (toTrain == null) {
                throw OptError.invalid("spec.state.weights_view: %s has no eval point to convert from",
                        model.config().getAlgorithm());
            }
            List<TensorProgram> programs = new ArrayList<>();
            for (TensorEntry t : tensors) {
                if (t.steps > 0) { // a tensor without z holds y = x
                    programs.add(new TensorProgram(t.storage, List.of(t.group.algorithm.trainFromEval())));
                }
            }
            model.engine().run(programs);
        } else if (saved != ViewKind.VIEW_TRAIN && saved != ViewKind.VIEW_KIND_UNSPECIFIED) {
            throw OptError.invalid("spec.state.weights_view: must be VIEW_TRAIN or VIEW_EVAL (got %s)", saved);
        }
    }

    /** A saved group's hyperparameters, changed between steps of the saved run, over the spec's. */
    private void restoreHyperparameters(GroupState g, com.google.protobuf.Struct saved) {
        try {
            GroupChange.resolve(model.groups(), model.name(), Map.of(g.name, saved)).forEach(GroupChange::apply);
        } catch (OptError e) {
            throw OptError.invalid("spec.state.groups[%s].hyperparameters: %s", Echo.of(g.name), e.getMessage());
        }
    }

    /** A saved group's scalars: exactly the ones its algorithm declares, each a finite number. */
    private GroupScalars restoredScalars(GroupState g, Map<String, Double> saved) {
        String field = "spec.state.groups[" + Echo.of(g.name) + "].scalars";
        List<String> declared = g.scalars.names();
        for (String name : saved.keySet()) {
            if (!declared.contains(name)) {
                throw OptError.invalid("%s.%s: %s declares no such group scalar (it declares %s)", field, Echo.of(name),
                        model.config().getAlgorithm(), declared.isEmpty() ? "none" : String.join(", ", declared));
            }
        }
        GroupScalars restored = g.scalars;
        for (String name : declared) {
            Double value = saved.get(name);
            if (value == null) {
                throw OptError.invalid("%s.%s: missing; %s declares %s and a saved group needs each", field, name,
                        model.config().getAlgorithm(), String.join(", ", declared));
            }
            if (!Double.isFinite(value)) {
                throw OptError.invalid("%s.%s: must be finite (got %s)", field, name, value);
            }
            restored = restored.with(name, value);
        }
        return restored;
    }

    /** Lookahead's slow weights start as θ unless a saved run sent them. */
    private void initialiseWrappers() {
        Lookahead lookahead = model.training().lookahead();
        if (lookahead == null) {
            return;
        }
        List<TensorProgram> programs = new ArrayList<>();
        for (TensorEntry t : model.tensors()) {
            int slow = t.slot(Lookahead.SLOW_SLOT);
            if (!slots.get(t.index).containsKey(slow)) {
                programs.add(new TensorProgram(t.storage, List.of(lookahead.initialise(slow))));
            }
        }
        model.engine().run(programs);
    }

    /** Frees the memory of a model that will not be published. */
    public void discard() {
        if (!done) {
            done = true;
            registry.registrationEnded();
            model.delete();
            registry.release(model.memoryBytes());
        }
    }
}
