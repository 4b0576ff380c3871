package dev.optsidecar.server.engine;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * What one step runs on one tensor: kernel calls applied in order, element by element, so that
 * each call sees what the previous one wrote (an EMA blend reads the θ the optimizer just wrote).
 * An engine may run them as one pass over memory.
 */
public record TensorProgram(EngineTensor tensor, List<KernelCall> calls) {
    public TensorProgram {
        calls = List.copyOf(calls);
        if (calls.isEmpty()) {
            throw new IllegalArgumentException("a program needs at least one kernel call");
        }
    }
}
