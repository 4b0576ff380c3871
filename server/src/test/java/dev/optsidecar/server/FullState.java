package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Everything a client can read of a model: its description and, per tensor, every view it serves
 * and every state slot, keyed "view ..." or "slot ..." (null where a tensor lacks the slot).
 */
public record FullState(ModelInfo info, Map<String, List<float[]>> values) {
    public static FullState of(OptSidecarClient client, String model) {
        ModelInfo info = client.describe(model);
        Map<String, List<float[]>> values = new LinkedHashMap<>();
        for (View v : info.getViewsList()) {
            values.put("view " + v, read(client, model, v, info));
        }
        info.getTensorsList().stream().flatMap(t -> t.getSlotsList().stream()).distinct().forEach(slot ->
                values.put("slot " + slot, read(client, model,
                        View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build(), info)));
        return new FullState(info, values);
    }

    private static List<float[]> read(OptSidecarClient client, String model, View v, ModelInfo info) {
        List<float[]> out = new ArrayList<>();
        List<TensorData> into = new ArrayList<>();
        List<Integer> having = new ArrayList<>();
        for (int i = 0; i < info.getTensorsCount(); i++) {
            boolean has = v.getKind() != ViewKind.VIEW_SLOT || info.getTensors(i).getSlotsList().contains(v.getSlot());
            float[] values = has ? new float[Math.toIntExact(info.getTensors(i).getNumel())] : null;
            out.add(values);
            into.add(has ? TensorData.of(values) : null);
            if (has) {
                having.add(i);
            }
        }
        client.pull(model, v, into, having);
        return out;
    }

    /** The values of tensor {@code index} under {@code key} ("view ..." or "slot ..."). */
    public float[] get(String key, int index) {
        return values.get(key).get(index);
    }

    /** Bit-for-bit the same description (but for the clients' bookkeeping) and values. */
    public void assertSame(FullState other, String what) {
        assertEquals(Twins.withoutClients(info).toBuilder().clearName().build(),
                Twins.withoutClients(other.info).toBuilder().clearName().build(), what + ": description");
        assertEquals(values.keySet(), other.values.keySet(), what + ": views and slots");
        for (String key : values.keySet()) {
            for (int t = 0; t < values.get(key).size(); t++) {
                assertArrayEquals(values.get(key).get(t), other.values.get(key).get(t), what + ": " + key + " tensor " + t);
            }
        }
    }
}
