package dev.optsidecar.server.engine;

import java.util.List;

/**
 * Owns the memory of every tensor and runs the kernel catalogue ({@code engine/kernel}) on it.
 * The interface is deliberately narrow (allocate, move bytes in and out, run kernel calls): an
 * engine that keeps its buffers elsewhere, such as on a GPU, implements it and the catalogue's
 * kernels, nothing else.
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

    /** Runs every tensor's program over the whole tensor and returns when all are done. */
    void run(List<TensorProgram> programs);

    /**
     * As {@link #run}, and returns the update's sum of squares Σ(θ_after − θ_before)² over every
     * element of every program (the {@code update_squares} reduction of the catalogue).
     */
    double runMeasuringUpdate(List<TensorProgram> programs);

    /**
     * Whether {@link #run} honours {@link TensorProgram#weightsOut}: the step's pass writes each
     * tensor's new θ into a reply's chunks as it goes, sparing the reply a pass of its own.
     */
    default boolean writesWeightChunks() {
        return false;
    }

    /** How this engine runs a step straight from a trainer's shared memory, or null where it does not. */
    default SegmentStepper segmentStepper() {
        return null;
    }

    /** The engine's kind as ServerInfo reports it: "cpu" or "cuda". */
    default String name() {
        return "cpu";
    }

    /** The device the engine computes on, for ServerInfo and logs; empty for the CPU. */
    default String device() {
        return "";
    }

    /**
     * The device's UUID (8-4-4-4-12 hex digits) for ServerInfo, so that a trainer can tell it is on
     * the same GPU; empty for the CPU.
     */
    default String deviceUuid() {
        return "";
    }

    /** Number of threads the engine computes on. */
    int threads();

    @Override
    void close();
}
