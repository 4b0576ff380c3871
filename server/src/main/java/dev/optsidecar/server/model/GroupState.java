package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.AlgorithmDefinition;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Hyperparameters;

/**
 * A parameter group: its effective hyperparameters, its algorithm instance, base lr and scalars.
 * Hyperparameters may change between steps (as torch's param_groups may be edited); they change
 * only under the model's write lock, through {@link GroupChange}.
 */
final class GroupState {
    final String name;
    final AlgorithmDefinition definition;
    /** The effective hyperparameters; their "lr" is the one the group was built with (see baseLr). */
    Hyperparameters hyperparameters;
    Algorithm algorithm;
    /** The base learning rate; a client may change it between steps, as torch schedulers do. */
    double baseLr;
    /** The algorithm's declared group scalars (Schedule-Free's k, weight_sum and lr_max). */
    GroupScalars scalars;

    GroupState(String name, AlgorithmDefinition definition, Hyperparameters hyperparameters) {
        this.name = name;
        this.definition = definition;
        this.hyperparameters = hyperparameters;
        this.algorithm = definition.create(hyperparameters);
        this.baseLr = hyperparameters.number("lr");
        this.scalars = GroupScalars.initial(algorithm.groupScalars());
    }

    /** Every hyperparameter with its current value, lr being the base lr. */
    Struct effective() {
        return hyperparameters.toStruct().toBuilder()
                .putFields("lr", Value.newBuilder().setNumberValue(baseLr).build()).build();
    }
}
