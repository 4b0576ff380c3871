package dev.optsidecar.server.engine;

/** A step to apply to one whole tensor. */
public record TensorStep(EngineTensor tensor, FusedStep step) {}
