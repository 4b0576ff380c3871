package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.VersionContributions;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Hyperparameters;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

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
        ModelSpec extended = extendedSpec(previous, request, registry.limits());
        return new TensorAddition(registry, previous, registry.prepare(extended, true), request.getGroup().getName());
    }

    /** The model's spec with the new tensors after its own and their group after its own groups. */
    private static ModelSpec extendedSpec(Model previous, AddTensorsSpec request, Limits limits) {
        String name = previous.name();
        if (request.getTensorsCount() == 0) {
            throw OptError.invalid("spec.tensors: name at least one tensor to add");
        }
        long total = (long) previous.tensorCount() + request.getTensorsCount();
        if (total > limits.maxTensorsPerModel()) {
            throw OptError.exhausted("spec.tensors: model '%s' would have %d tensors, more than the server's limit of"
                    + " %d per model (raise it with --max-tensors-per-model)", Echo.of(name), total,
                    limits.maxTensorsPerModel());
        }
        Set<String> taken = new HashSet<>();
        previous.tensors().forEach(t -> taken.add(t.name));
        List<String> added = new ArrayList<>();
        for (int i = 0; i < request.getTensorsCount(); i++) {
            TensorSpec t = request.getTensors(i);
            String field = "spec.tensors[" + i + "]";
            if (t.getName().isEmpty()) {
                throw OptError.invalid("%s.name: a tensor name is required", field);
            }
            if (!taken.add(t.getName())) {
                throw OptError.invalid("%s.name: model '%s' already has a tensor named '%s'%s", field, Echo.of(name),
                        Echo.of(t.getName()), added.contains(t.getName()) ? " (named twice in this request)" : "");
            }
            checkShape(t, field);
            added.add(t.getName());
        }
        ParamGroup g = request.getGroup();
        if (g.getName().isEmpty()) {
            throw OptError.invalid("spec.group.name: a name for the new group is required");
        }
        if (previous.groups().stream().anyMatch(x -> x.name.equals(g.getName()))) {
            throw OptError.invalid("spec.group.name: model '%s' already has a group named '%s'", Echo.of(name),
                    Echo.of(g.getName()));
        }
        if (g.getTensorsCount() > 0 && !(g.getTensorsCount() == added.size() && Set.copyOf(g.getTensorsList())
                .equals(Set.copyOf(added)))) {
            throw OptError.invalid("spec.group.tensors: must name exactly the new tensors (%s), or be left empty",
                    Echo.of(String.join(", ", added)));
        }
        checkHyperparameters(previous, g.getHyperparameters());
        return withExplicitDefaultGroup(previous).toBuilder()
                .addAllTensors(request.getTensorsList())
                .addGroups(g.toBuilder().clearTensors().addAllTensors(added))
                .build();
    }

    /**
     * The model's spec with the tensors no group names listed in a group "default" of their own (the
     * model's hyperparameters, as the implicit one has), so that the new group comes after every
     * group of the model, as torch appends it to param_groups.
     */
    private static ModelSpec withExplicitDefaultGroup(Model previous) {
        List<String> ungrouped = new ArrayList<>();
        for (TensorEntry t : previous.tensors()) {
            if (t.group.name.equals(ModelFactory.DEFAULT_GROUP)) {
                ungrouped.add(t.name);
            }
        }
        ModelSpec spec = previous.spec();
        if (ungrouped.isEmpty() || spec.getGroupsList().stream().anyMatch(g -> g.getName().equals(ModelFactory.DEFAULT_GROUP))) {
            return spec;
        }
        return spec.toBuilder().addGroups(ParamGroup.newBuilder().setName(ModelFactory.DEFAULT_GROUP)
                .addAllTensors(ungrouped)).build();
    }

    /** Dimensions > 0 whose product fits a long, as a registration's. */
    private static void checkShape(TensorSpec t, String field) {
        long numel = 1;
        for (int d = 0; d < t.getShapeCount(); d++) {
            long dim = t.getShape(d);
            if (dim <= 0) {
                throw OptError.invalid("%s.shape[%d]: tensor '%s' has dimension %s; dimensions must be > 0", field, d,
                        Echo.of(t.getName()), Long.toUnsignedString(dim));
            }
            try {
                numel = Math.multiplyExact(numel, dim);
            } catch (ArithmeticException e) {
                throw OptError.invalid("%s.shape: tensor '%s' has too many elements", field, Echo.of(t.getName()));
            }
        }
    }

    /** The group's overrides over the model's hyperparameters: known names, types and ranges for its algorithm. */
    private static void checkHyperparameters(Model previous, Struct overrides) {
        AlgorithmDefinition definition = Algorithms.byName(previous.config().getAlgorithm(), "spec.optimizer.algorithm");
        Map<String, Struct> layers = new LinkedHashMap<>();
        layers.put("optimizer.hyperparameters", previous.config().getHyperparameters());
        layers.put("spec.group.hyperparameters", overrides);
        definition.create(Hyperparameters.merge(definition, layers));
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
        for (VersionContributions v : previous.history().from(0)) {
            extended.history().record(v.getVersion(), v.getContributionsList());
        }
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
