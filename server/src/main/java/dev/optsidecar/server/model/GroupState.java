package dev.optsidecar.server.model;

import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.GroupScalars;
import dev.optsidecar.server.optim.Hyperparameters;

/** A parameter group: its effective hyperparameters, its algorithm instance, base lr and scalars. */
final class GroupState {
    final String name;
    final Hyperparameters hyperparameters;
    final Algorithm algorithm;
    /** The base learning rate; a client may change it between steps, as torch schedulers do. */
    double baseLr;
    /** The algorithm's declared group scalars (Schedule-Free's k, weight_sum and lr_max). */
    GroupScalars scalars;

    GroupState(String name, Hyperparameters hyperparameters, Algorithm algorithm) {
        this.name = name;
        this.hyperparameters = hyperparameters;
        this.algorithm = algorithm;
        this.baseLr = hyperparameters.number("lr");
        this.scalars = GroupScalars.initial(algorithm.groupScalars());
    }
}
