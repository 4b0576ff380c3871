package dev.optsidecar.server.engine;

import java.util.List;

/**
 * Owns the memory of every tensor and applies fused optimizer steps to it. The interface is
 * deliberately narrow (allocate, move bytes in and out, apply a step) so that an engine keeping
 * its buffers on a GPU fits behind it unchanged.
 */
public interface Engine extends AutoCloseable {
    /**
     * Allocates a tensor with zeroed parameters, gradient and {@code slots} state buffers.
     *
     * @throws OutOfMemoryError when the memory cannot be had
     */
    EngineTensor allocate(long numel, int slots);

    /** Bytes that {@link #allocate} would take for such a tensor. */
    long bytesFor(long numel, int slots);

    /** Applies every step, each over its whole tensor, and returns when all are done. */
    void apply(List<TensorStep> steps);

    /** Number of threads the engine computes on. */
    int threads();

    @Override
    void close();
}
