package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.GroupScalar;
import dev.optsidecar.server.optim.Hyperparameters;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A validated change of one group's hyperparameters from a step on (StepCommit.group_lr and
 * group_hyperparameters), as when a torch trainer edits param_groups between steps. A step's
 * changes are combined into one Struct per group, resolved against the groups' current values
 * before the step is journaled, and applied after; the journal keeps the combined form, so a
 * replay resolves and applies exactly the same values.
 *
 * @param hyperparameters the group's new effective hyperparameters, or null when only lr changes
 * @param algorithm       the algorithm built from them, or null when only lr changes
 */
record GroupChange(GroupState group, double lr, Hyperparameters hyperparameters, Algorithm algorithm) {
    private static final String LR = "lr";

    /** What puts the group back as it is now: taken before {@link #apply}, for a step that is then refused. */
    Runnable undo() {
        double lr = group.baseLr;
        Hyperparameters hp = group.hyperparameters;
        Algorithm before = group.algorithm;
        return () -> {
            group.baseLr = lr;
            group.hyperparameters = hp;
            group.algorithm = before;
        };
    }

    void apply() {
        if (hyperparameters != null) {
            group.hyperparameters = hyperparameters;
            group.algorithm = algorithm;
        }
        group.baseLr = lr;
    }

    /**
     * A commit's learning rates and hyperparameter changes as one Struct per group, in group
     * order. The learning rates are checked here, so that their errors name group_lr.
     */
    static Map<String, Struct> combine(List<GroupState> groups, String model, Map<String, Double> groupLr,
                                       Map<String, Struct> groupHyperparameters) {
        for (Map.Entry<String, Double> e : groupLr.entrySet()) {
            find(groups, model, e.getKey(), "commit.group_lr");
            checkLr(e.getValue(), "commit.group_lr[" + Echo.of(e.getKey()) + "]");
            Struct other = groupHyperparameters.get(e.getKey());
            if (other != null && other.containsFields(LR)) {
                throw OptError.invalid("commit.group_hyperparameters[%s].lr: the group's lr is also in commit.group_lr;"
                        + " send it in one of them", Echo.of(e.getKey()));
            }
        }
        for (String name : groupHyperparameters.keySet()) {
            find(groups, model, name, "commit.group_hyperparameters");
        }
        Map<String, Struct> combined = new LinkedHashMap<>();
        for (GroupState g : groups) {
            Struct.Builder change = groupHyperparameters.getOrDefault(g.name, Struct.getDefaultInstance()).toBuilder();
            Double lr = groupLr.get(g.name);
            if (lr != null) {
                change.putFields(LR, Value.newBuilder().setNumberValue(lr).build());
            }
            if (change.getFieldsCount() > 0) {
                combined.put(g.name, change.build());
            }
        }
        return combined;
    }

    /** Several contributors' changes of one sync step, in contribution order: a later value of a name wins. */
    static Map<String, Struct> merge(List<Map<String, Struct>> changes) {
        Map<String, Struct> merged = new LinkedHashMap<>();
        for (Map<String, Struct> c : changes) {
            c.forEach((group, change) -> merged.merge(group, change,
                    (before, after) -> before.toBuilder().putAllFields(after.getFieldsMap()).build()));
        }
        return merged;
    }

    /**
     * Validates combined changes against the groups' current values: each name must be one of
     * the algorithm's, each value valid for it, and the group must keep its state slots and
     * scalars (their buffers exist from registration on).
     */
    static List<GroupChange> resolve(List<GroupState> groups, String model, Map<String, Struct> combined) {
        List<GroupChange> out = new ArrayList<>();
        for (Map.Entry<String, Struct> e : combined.entrySet()) {
            GroupState g = find(groups, model, e.getKey(), "commit.group_hyperparameters");
            String field = "commit.group_hyperparameters[" + Echo.of(g.name) + "]";
            Struct change = e.getValue();
            if (change.getFieldsCount() == 1 && change.containsFields(LR)) {
                out.add(new GroupChange(g, lrOf(change.getFieldsOrThrow(LR), field + ".lr"), null, null));
                continue;
            }
            Map<String, Struct> layers = new LinkedHashMap<>();
            layers.put("group '" + Echo.of(g.name) + "' hyperparameters", g.effective());
            layers.put(field, change);
            Hyperparameters hp = Hyperparameters.merge(g.definition, layers);
            Algorithm algorithm = g.definition.create(hp);
            if (!algorithm.stateSlots().equals(g.algorithm.stateSlots())) {
                throw OptError.invalid("%s: the change would give group '%s' the state slots %s instead of %s;"
                                + " a group keeps its state slots (e.g. amsgrad, or SGD momentum from or to 0) from"
                                + " registration on: register or fork a model to change them", field,
                        Echo.of(g.name), algorithm.stateSlots(), g.algorithm.stateSlots());
            }
            if (!names(algorithm.groupScalars()).equals(names(g.algorithm.groupScalars()))) {
                throw OptError.invalid("%s: the change would change the scalars group '%s' keeps", field,
                        Echo.of(g.name));
            }
            out.add(new GroupChange(g, lrOf(hp.toStruct().getFieldsOrThrow(LR), field + ".lr"), hp, algorithm));
        }
        return out;
    }

    private static List<String> names(List<GroupScalar> scalars) {
        return scalars.stream().map(GroupScalar::name).toList();
    }

    private static double lrOf(Value v, String field) {
        if (v.getKindCase() != Value.KindCase.NUMBER_VALUE) {
            throw OptError.invalid("%s: expected a finite number", field);
        }
        return checkLr(v.getNumberValue(), field);
    }

    private static double checkLr(double lr, String field) {
        if (!(lr >= 0) || Double.isInfinite(lr)) {
            throw OptError.invalid("%s: learning rate must be finite and >= 0 (got %s)", field, lr);
        }
        return lr;
    }

    private static GroupState find(List<GroupState> groups, String model, String name, String field) {
        for (GroupState g : groups) {
            if (g.name.equals(name)) {
                return g;
            }
        }
        throw OptError.invalid("%s: model '%s' has no group '%s'", field, Echo.of(model), Echo.of(name));
    }
}
