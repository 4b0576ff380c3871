package dev.optsidecar.server.model;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.engine.EngineTensor;

import java.util.List;

/** One named tensor of a model: its shape, its group, its engine storage and its step count. */
final class TensorEntry {
    final int index;
    final String name;
    final long[] shape;
    final long numel;
    final GroupState group;
    final EngineTensor storage;
    /** Names of the state slots, in the engine's slot order: the algorithm's, then the wrappers'. */
    final List<String> slots;
    /** Steps applied to this tensor; it does not advance on steps where the tensor had no gradient. */
    long steps;

    TensorEntry(int index, String name, long[] shape, long numel, GroupState group, EngineTensor storage,
                List<String> slots) {
        this.index = index;
        this.name = name;
        this.shape = shape;
        this.numel = numel;
        this.group = group;
        this.storage = storage;
        this.slots = List.copyOf(slots);
    }

    /** Index of the named state slot, or -1. */
    int slot(String name) {
        return slots.indexOf(name);
    }

    String describe() {
        return "tensor '" + Echo.of(name) + "' (index " + index + ")";
    }
}
