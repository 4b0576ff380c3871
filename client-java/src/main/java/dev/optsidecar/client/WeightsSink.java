package dev.optsidecar.client;

import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.proto.v1.WireDtype;

import java.util.List;

/**
 * Copies incoming weights chunks straight into the caller's tensors and checks that they cover
 * every element of one view and one version.
 */
final class WeightsSink {
    private final List<? extends TensorData> out;
    private long received;
    private final long expected;
    private final WireDtype wire;
    private View view;
    private long version = -1;

    WeightsSink(List<? extends TensorData> out) {
        this(out, WireDtype.WIRE_FLOAT32);
    }

    /** A sink for chunks of {@code wire} elements, widened to the tensors' float32. */
    WeightsSink(List<? extends TensorData> out, WireDtype wire) {
        this.out = out;
        this.wire = wire;
        long total = 0;
        for (TensorData t : out) {
            total += t == null ? 0 : t.numel();
        }
        this.expected = total;
    }

    void accept(WeightsChunk chunk) {
        if (chunk.getTensor() >= out.size() || out.get(chunk.getTensor()) == null) {
            throw new IllegalStateException("server sent tensor " + chunk.getTensor() + ", which has no destination");
        }
        if (view == null) {
            view = chunk.getView();
            version = chunk.getVersion();
        } else if (!view.equals(chunk.getView()) || version != chunk.getVersion()) {
            throw new IllegalStateException("weights chunks mix views or versions");
        }
        java.nio.ByteBuffer data = chunk.getData().asReadOnlyByteBuffer();
        out.get(chunk.getTensor()).write(chunk.getOffset(),
                wire == WireDtype.WIRE_FLOAT32 ? data : WireElements.widen(data, wire));
        received += chunk.getData().size() / WireElements.bytes(wire);
    }

    long received() {
        return received;
    }

    /** Checks completeness and returns the view and version received. */
    OptSidecarClient.Weights finish() {
        if (received != expected) {
            throw new IllegalStateException("received " + received + " of " + expected + " weights");
        }
        return new OptSidecarClient.Weights(view, version);
    }
}
