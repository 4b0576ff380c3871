package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.Hyperparameters;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The spec of a model extended by AddTensors, validated field by field against the model (names,
 * shapes, the group's name, tensors and hyperparameters, the tensor limit), with errors naming the
 * AddTensorsSpec field at fault.
 */
final class ExtendedSpec {
    private ExtendedSpec() {}

    /** The model's spec with the new tensors after its own and their group after its own groups. */
    static ModelSpec of(Model previous, AddTensorsSpec request, Limits limits) {
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
}
