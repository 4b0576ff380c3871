package dev.optsidecar.server.model;

/**
 * Where a model records each step before applying it, so that a step acknowledged to a client
 * survives a crash (the step journal). Called under the model's write lock, before the step
 * changes anything; if it throws, the step is not applied.
 */
public interface StepLog {
    void append(StepRecord step);
}
