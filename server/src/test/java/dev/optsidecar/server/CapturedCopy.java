package dev.optsidecar.server;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.TensorInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;

import java.util.ArrayList;
import java.util.List;

/**
 * A model registered from another one's captured state through Register (every state slot pulled
 * with VIEW_SLOT, the counters from Describe), with weights and a spec the test chooses: the
 * independent way to say what a model should hold after a trainer edits it, since registration
 * with state is how a saved run resumes.
 */
public final class CapturedCopy {
    private CapturedCopy() {}

    /**
     * Registers {@code spec} (under its own name) with {@code weights} at {@code weightsView} and
     * every state slot and counter of {@code source} as it is now; group hyperparameters come from
     * {@code spec} alone.
     */
    public static ModelInfo register(OptSidecarClient client, String source, ModelSpec spec, List<float[]> weights,
                                     ViewKind weightsView) {
        ModelInfo info = client.describe(source);
        ModelState.Builder state = info.getState().toBuilder().clearClients().setWeightsView(weightsView);
        for (GroupCounters.Builder g : state.getGroupsBuilderList()) {
            g.clearHyperparameters();
        }
        List<OptSidecarClient.StateBuffer> slots = new ArrayList<>();
        for (int i = 0; i < info.getTensorsCount(); i++) {
            TensorInfo t = info.getTensors(i);
            for (String slot : t.getSlotsList()) {
                // Pull writes tensor i's chunks into the i-th destination; the others get none.
                List<TensorData> out = new ArrayList<>(java.util.Collections.nCopies(info.getTensorsCount(), null));
                out.set(i, TensorData.of(new float[(int) t.getNumel()]));
                client.pull(source, View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build(), out,
                        List.of(i));
                slots.add(new OptSidecarClient.StateBuffer(i, slot, out.get(i)));
            }
        }
        return client.register(spec.toBuilder().setState(state).build(),
                weights.stream().map(TensorData::of).toList(), slots);
    }
}
