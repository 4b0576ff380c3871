package dev.optsidecar.server.engine.cpu;

/** A view kernel call bound to the CPU: computes elements {@code [from, to)} of one block into an output. */
@FunctionalInterface
interface ViewLoop {
    /** Writes the view of elements {@code [from, to)} into {@code out[outOffset...]}. */
    void compute(float[] p, float[][] state, int from, int to, float[] out, int outOffset);
}
