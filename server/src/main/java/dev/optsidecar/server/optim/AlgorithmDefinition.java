package dev.optsidecar.server.optim;

import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * A named algorithm: every hyperparameter it accepts with its default (Double, Boolean or
 * double[]), and how to build it from validated values.
 */
public record AlgorithmDefinition(String name, Map<String, Object> defaults, Function<Hyperparameters, Algorithm> factory) {
    /** Validates the hyperparameters and builds the algorithm; throws OptError naming a bad one. */
    public Algorithm create(Hyperparameters hp) {
        return factory.apply(hp);
    }

    /** The group scalars the algorithm declares, as built with its default hyperparameters. */
    public List<GroupScalar> groupScalars() {
        return create(Hyperparameters.merge(this, Map.of())).groupScalars();
    }
}
