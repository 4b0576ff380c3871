package dev.optsidecar.server.model;

import dev.optsidecar.server.engine.EngineTensor;

/** One named tensor of a model: its shape, its group, its engine storage and its step count. */
final class TensorEntry {
    final int index;
    final String name;
    final long[] shape;
    final long numel;
    final GroupState group;
    final EngineTensor storage;
    /** Steps applied to this tensor; it does not advance on steps where the tensor had no gradient. */
    long steps;

    TensorEntry(int index, String name, long[] shape, long numel, GroupState group, EngineTensor storage) {
        this.index = index;
        this.name = name;
        this.shape = shape;
        this.numel = numel;
        this.group = group;
        this.storage = storage;
    }

    String describe() {
        return "tensor '" + name + "' (index " + index + ")";
    }
}
