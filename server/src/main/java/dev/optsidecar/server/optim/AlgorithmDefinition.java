package dev.optsidecar.server.optim;

import java.util.Map;

/** A named algorithm: its hyperparameters with their defaults, and how to build it from them. */
public interface AlgorithmDefinition {
    String name();

    /** Every hyperparameter the algorithm accepts, with its default (Double, Boolean or double[]). */
    Map<String, Object> defaults();

    /** Validates the hyperparameters and builds the algorithm; throws OptError naming a bad one. */
    Algorithm create(Hyperparameters hp);
}
