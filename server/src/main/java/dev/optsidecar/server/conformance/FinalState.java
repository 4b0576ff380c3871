package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * Compares the optimizer state after the last step with the case's final_state: every state
 * tensor (read back through VIEW_SLOT), per-tensor step counts, the recorded group scalars, the
 * EMA shadow and its update count, and Lookahead's slow weights and counter.
 */
final class FinalState {
    private final OptSidecarClient client;
    private final String model;
    private final ReferenceCase c;
    private final Comparison cmp;

    FinalState(OptSidecarClient client, String model, ReferenceCase c, Comparison cmp) {
        this.client = client;
        this.model = model;
        this.c = c;
        this.cmp = cmp;
    }

    void check() {
        JsonNode fin = c.root.path("final_state");
        if (!fin.isObject()) {
            return;
        }
        ModelInfo info = client.describe(model);
        List<String> names = c.paramNames();
        JsonNode states = fin.path("state");
        for (int t = 0; t < states.size(); t++) {
            for (Iterator<Map.Entry<String, JsonNode>> it = states.get(t).fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                if (e.getKey().equals("step")) {
                    cmp.exact("final " + names.get(t) + " step", info.getTensors(t).getSteps(), e.getValue().asLong());
                } else if (e.getValue().isTextual()) {
                    slot(names, t, e.getKey(), ReferenceCase.decode(e.getValue().asText()));
                }
            }
        }
        JsonNode group = fin.path("groups").path(0);
        if (group.isObject()) {
            cmp.groupScalars("final", info.getState().getGroups(0).getScalarsMap(), group, c.recordedScalars());
        }
        JsonNode ema = fin.path("ema");
        if (ema.isObject()) {
            cmp.exact("final ema n_averaged", info.getState().getEmaUpdates(0), ema.path("n_averaged").asLong());
            compareView(names, View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("ema:0").build(),
                    "final ema shadow", ema.path("shadow"));
        }
        JsonNode lookahead = fin.path("lookahead");
        if (lookahead.isObject()) {
            cmp.exact("final la_step", info.getState().getLookaheadStep(), lookahead.path("la_step").asLong());
            compareView(names, View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("slow").build(),
                    "final slow", lookahead.path("slow"));
        }
    }

    /** One state tensor of one parameter: pull the slot for all tensors, compare this one. */
    private void slot(List<String> names, int tensor, String slot, float[] expected) {
        List<float[]> all = pull(View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build());
        cmp.tensors("final " + slot, List.of(names.get(tensor)), List.of(all.get(tensor)), List.of(expected));
    }

    private void compareView(List<String> names, View view, String what, JsonNode expected) {
        List<float[]> got = pull(view);
        cmp.tensors(what, names, got, expected.isArray() ? ReferenceCase.decodeAll(expected) : List.of());
    }

    private List<float[]> pull(View view) {
        List<float[]> out = new ArrayList<>();
        for (float[] p : c.initialParams()) {
            out.add(new float[p.length]);
        }
        client.pull(model, view, out.stream().map(TensorData::of).toList());
        return out;
    }
}
