package dev.optsidecar.server.optim;

/**
 * A per-group scalar an algorithm keeps between steps (Schedule-Free's k, weight_sum, lr_max),
 * declared like a state slot: by name, with its value before the first step.
 */
public record GroupScalar(String name, double initial) {}
