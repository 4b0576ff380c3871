package dev.optsidecar.server.model;

import java.nio.ByteBuffer;

/** Where a view's values come from, tensor by tensor: θ, a state slot, or a computed eval point. */
@FunctionalInterface
interface ViewSource {
    void read(TensorEntry t, long offset, int count, ByteBuffer dst);

    ViewSource TRAIN = (t, offset, count, dst) -> t.storage.readParams(offset, count, dst);

    /** A state slot by name (its index may differ between groups). */
    static ViewSource slot(String name) {
        return (t, offset, count, dst) -> t.storage.readSlot(t.slot(name), offset, count, dst);
    }

    /** The algorithm's eval point; a tensor that never had a gradient has no z yet, and x = y. */
    static ViewSource evalPoint() {
        return (t, offset, count, dst) -> {
            if (t.steps == 0) {
                t.storage.readParams(offset, count, dst);
            } else {
                t.storage.readView(t.group.algorithm.evalView(), offset, count, dst);
            }
        };
    }
}
