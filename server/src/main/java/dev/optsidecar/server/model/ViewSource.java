package dev.optsidecar.server.model;

import dev.optsidecar.server.engine.DeviceViewTarget;
import dev.optsidecar.server.engine.WireType;

import java.nio.ByteBuffer;

/** Where a view's values come from, tensor by tensor: θ, a state slot, or a computed eval point. */
interface ViewSource {
    /** Writes {@code count} values from {@code offset} into {@code dst}, as elements of {@code wire}. */
    void read(TensorEntry t, long offset, int count, ByteBuffer dst, WireType wire);

    /** As float32. */
    default void read(TensorEntry t, long offset, int count, ByteBuffer dst) {
        read(t, offset, count, dst, WireType.FLOAT32);
    }

    /** Writes the whole tensor's values into {@code target} on the device (float32). */
    void write(TensorEntry t, DeviceViewTarget target);

    ViewSource TRAIN = new ViewSource() {
        @Override
        public void read(TensorEntry t, long offset, int count, ByteBuffer dst, WireType wire) {
            t.storage.readParams(offset, count, dst, wire);
        }

        @Override
        public void write(TensorEntry t, DeviceViewTarget target) {
            target.params(t.index, t.storage);
        }
    };

    /** A state slot by name (its index may differ between groups). */
    static ViewSource slot(String name) {
        return new ViewSource() {
            @Override
            public void read(TensorEntry t, long offset, int count, ByteBuffer dst, WireType wire) {
                t.storage.readSlot(t.slot(name), offset, count, dst, wire);
            }

            @Override
            public void write(TensorEntry t, DeviceViewTarget target) {
                target.slot(t.index, t.storage, t.slot(name));
            }
        };
    }

    /** The algorithm's eval point; a tensor that never had a gradient has no z yet, and x = y. */
    static ViewSource evalPoint() {
        return new ViewSource() {
            @Override
            public void read(TensorEntry t, long offset, int count, ByteBuffer dst, WireType wire) {
                if (t.steps == 0) {
                    t.storage.readParams(offset, count, dst, wire);
                } else {
                    t.storage.readView(t.group.algorithm.evalView(), offset, count, dst, wire);
                }
            }

            @Override
            public void write(TensorEntry t, DeviceViewTarget target) {
                if (t.steps == 0) {
                    target.params(t.index, t.storage);
                } else {
                    target.view(t.index, t.storage, t.group.algorithm.evalView());
                }
            }
        };
    }
}
