package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.Hyperparameters;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/** Validates a ModelSpec, field by field, and allocates the model it describes. */
final class ModelFactory {
    static final String DEFAULT_GROUP = "default";

    private ModelFactory() {}

    static PendingModel build(ModelSpec spec, Engine engine, ModelRegistry registry) {
        String name = spec.getName();
        if (name.isEmpty()) {
            throw OptError.invalid("spec.name: a model name is required");
        }
        if (spec.getTensorsCount() == 0) {
            throw OptError.invalid("spec.tensors: model '%s' has no tensors", name);
        }
        OptimizerConfig config = spec.getOptimizer();
        AlgorithmDefinition definition = Algorithms.byName(config.getAlgorithm(), "spec.optimizer.algorithm");
        if (config.hasSchedule() && !config.getSchedule().getType().isEmpty()
                && !config.getSchedule().getType().equals("constant")) {
            throw OptError.unimplemented("spec.optimizer.schedule.type: schedule '%s' is not implemented by this"
                    + " server yet", config.getSchedule().getType());
        }
        if (config.getEmaCount() > 0) {
            throw OptError.unimplemented("spec.optimizer.ema: EMA shadows are not implemented by this server yet");
        }
        if (config.hasLookahead()) {
            throw OptError.unimplemented("spec.optimizer.lookahead: Lookahead is not implemented by this server yet");
        }
        if (config.getNonFiniteValue() > 2) {
            throw OptError.invalid("spec.optimizer.non_finite: unknown policy %d", config.getNonFiniteValue());
        }

        Map<String, Integer> tensorIndex = new HashMap<>();
        List<long[]> shapes = new ArrayList<>();
        List<Long> sizes = new ArrayList<>();
        for (int i = 0; i < spec.getTensorsCount(); i++) {
            TensorSpec t = spec.getTensors(i);
            String field = "spec.tensors[" + i + "]";
            if (t.getName().isEmpty()) {
                throw OptError.invalid("%s.name: a tensor name is required", field);
            }
            if (tensorIndex.putIfAbsent(t.getName(), i) != null) {
                throw OptError.invalid("%s.name: duplicate tensor name '%s'", field, t.getName());
            }
            long[] shape = new long[t.getShapeCount()];
            long numel = 1;
            for (int d = 0; d < shape.length; d++) {
                shape[d] = t.getShape(d);
                if (shape[d] <= 0) {
                    throw OptError.invalid("%s.shape[%d]: tensor '%s' has dimension %s; dimensions must be > 0",
                            field, d, t.getName(), Long.toUnsignedString(shape[d]));
                }
                try {
                    numel = Math.multiplyExact(numel, shape[d]);
                } catch (ArithmeticException e) {
                    throw OptError.invalid("%s.shape: tensor '%s' has too many elements", field, t.getName());
                }
            }
            shapes.add(shape);
            sizes.add(numel);
        }

        // Groups: each tensor belongs to exactly one; the unnamed rest form "default".
        String[] groupOf = new String[spec.getTensorsCount()];
        Map<String, Hyperparameters> groupHp = new LinkedHashMap<>();
        Set<String> groupNames = new HashSet<>();
        for (int gi = 0; gi < spec.getGroupsCount(); gi++) {
            ParamGroup g = spec.getGroups(gi);
            String field = "spec.groups[" + gi + "]";
            String groupName = g.getName().isEmpty() ? "group" + gi : g.getName();
            if (!groupNames.add(groupName)) {
                throw OptError.invalid("%s.name: duplicate group name '%s'", field, groupName);
            }
            for (String tensorName : g.getTensorsList()) {
                Integer idx = tensorIndex.get(tensorName);
                if (idx == null) {
                    throw OptError.invalid("%s.tensors: no tensor named '%s'", field, tensorName);
                }
                if (groupOf[idx] != null) {
                    throw OptError.invalid("%s.tensors: tensor '%s' is already in group '%s'",
                            field, tensorName, groupOf[idx]);
                }
                groupOf[idx] = groupName;
            }
            groupHp.put(groupName, hyperparameters(definition, config, field + ".hyperparameters",
                    g.getHyperparameters()));
        }
        boolean needsDefault = false;
        for (int i = 0; i < groupOf.length; i++) {
            if (groupOf[i] == null) {
                groupOf[i] = DEFAULT_GROUP;
                needsDefault = true;
            }
        }
        // Tensors no group names join "default": a group of that name if the spec has one, else
        // a group with the model's hyperparameters.
        if (needsDefault && !groupHp.containsKey(DEFAULT_GROUP)) {
            groupHp.put(DEFAULT_GROUP, hyperparameters(definition, config, null, null));
        }

        Map<String, GroupState> groups = new LinkedHashMap<>();
        for (Map.Entry<String, Hyperparameters> e : groupHp.entrySet()) {
            Algorithm algorithm = definition.create(e.getValue());
            groups.put(e.getKey(), new GroupState(e.getKey(), e.getValue(), algorithm));
        }

        long bytes = 0;
        for (int i = 0; i < sizes.size(); i++) {
            bytes += engine.bytesFor(sizes.get(i), groups.get(groupOf[i]).algorithm.stateSlots().size());
        }
        registry.reserve(name, bytes);
        List<TensorEntry> tensors = new ArrayList<>();
        try {
            for (int i = 0; i < sizes.size(); i++) {
                GroupState g = groups.get(groupOf[i]);
                EngineTensor storage = engine.allocate(sizes.get(i), g.algorithm.stateSlots().size());
                tensors.add(new TensorEntry(i, spec.getTensors(i).getName(), shapes.get(i), sizes.get(i), g, storage));
            }
        } catch (OutOfMemoryError e) {
            tensors.forEach(t -> t.storage.free());
            registry.release(bytes);
            throw OptError.exhausted("model '%s': out of memory allocating %d bytes; raise the JVM heap (-Xmx)"
                    + " or lower --memory-limit", name, bytes);
        }
        Model model = new Model(name, config, tensors, new ArrayList<>(groups.values()), engine, bytes);
        return new PendingModel(model, registry);
    }

    private static Hyperparameters hyperparameters(AlgorithmDefinition def, OptimizerConfig config,
                                                   String groupField, Struct groupValues) {
        Map<String, Struct> layers = new LinkedHashMap<>();
        layers.put("spec.optimizer.hyperparameters", config.getHyperparameters());
        if (groupField != null) {
            layers.put(groupField, groupValues);
        }
        return Hyperparameters.merge(def, layers);
    }
}
