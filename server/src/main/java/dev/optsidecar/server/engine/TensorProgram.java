package dev.optsidecar.server.engine;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * What one step runs on one tensor: kernel calls applied in order, element by element, so that
 * each call sees what the previous one wrote (an EMA blend reads the θ the optimizer just wrote).
 * An engine may run them as one pass over memory.
 *
 * @param weightsOut where the pass also writes the tensor's new θ as a reply's chunks, or null;
 *                   only for an engine that {@linkplain Engine#writesWeightChunks writes them}
 */
public record TensorProgram(EngineTensor tensor, List<KernelCall> calls, ViewChunks weightsOut) {
    public TensorProgram {
        calls = List.copyOf(calls);
        if (calls.isEmpty()) {
            throw new IllegalArgumentException("a program needs at least one kernel call");
        }
    }

    public TensorProgram(EngineTensor tensor, List<KernelCall> calls) {
        this(tensor, calls, null);
    }
}
