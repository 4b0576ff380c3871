package dev.optsidecar.server.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.util.JsonFormat;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.optim.Algorithms;
import dev.optsidecar.server.optim.GroupScalar;
import dev.optsidecar.server.snapshot.FileOut;
import dev.optsidecar.server.snapshot.TensorOut;

import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A model as snapshot files: its train weights (where training resumes), every state buffer, and,
 * when it has one, its eval view for loading without the server; plus the spec, counters and
 * clients' sequence numbers as metadata. Everything is read under the model's read lock, so the
 * files hold one version.
 */
public final class ModelCapture {
    public static final String WEIGHTS_FILE = "weights.safetensors";
    public static final String STATE_FILE = "state.safetensors";
    public static final String EVAL_FILE = "eval.safetensors";
    private static final ObjectMapper JSON = new ObjectMapper();

    private ModelCapture() {}

    /** Writes a captured model; runs under the model's read lock. */
    @FunctionalInterface
    public interface Writer<T> {
        T write(long version, JsonNode meta, List<FileOut> files) throws IOException;
    }

    /** Runs {@code writer} on the model's files and metadata while no step can change them. */
    public static <T> T capture(Model m, Writer<T> writer) throws IOException {
        long stamp = m.readLock();
        try {
            m.checkLive();
            return writer.write(m.version(), meta(m), files(m));
        } finally {
            m.unlockRead(stamp);
        }
    }

    /** Writes one view of a model; runs under the model's read lock. */
    @FunctionalInterface
    public interface ViewWriter<T> {
        T write(long version, View label, FileOut file) throws IOException;
    }

    /** One view of the weights, for an export (unspecified: the eval view, else train); runs {@code writer} under the read lock. */
    public static <T> T captureView(Model m, View requested, ViewWriter<T> writer) throws IOException {
        View wanted = requested.getKind() == ViewKind.VIEW_KIND_UNSPECIFIED
                ? View.newBuilder().setKind(hasEval(m) ? ViewKind.VIEW_EVAL : ViewKind.VIEW_TRAIN).build()
                : requested;
        Model.ResolvedView view = m.resolveView(wanted, "view", false);
        long stamp = m.readLock();
        try {
            m.checkLive();
            return writer.write(m.version(), view.label(),
                    viewFile(m, view, "model.safetensors", "exported " + label(view.label()) + " weights, not resumable"));
        } finally {
            m.unlockRead(stamp);
        }
    }

    /** A short label for a view: train, eval, ema-0.999, slow, slot-exp_avg. */
    public static String label(View v) {
        return switch (v.getKind()) {
            case VIEW_TRAIN -> "train";
            case VIEW_EVAL -> "eval";
            case VIEW_EMA -> "ema-" + v.getEmaDecay();
            case VIEW_SLOW -> "slow";
            case VIEW_SLOT -> "slot-" + v.getSlot();
            default -> v.getKind().name().toLowerCase(java.util.Locale.ROOT);
        };
    }

    private static JsonNode meta(Model m) throws IOException {
        ObjectNode meta = JSON.createObjectNode();
        meta.put("run", m.run());
        meta.set("spec", JSON.readTree(JsonFormat.printer().print(m.spec())));
        meta.set("state", JSON.readTree(JsonFormat.printer().print(ModelDescription.of(m).getState())));
        return meta;
    }

    private static List<FileOut> files(Model m) {
        List<FileOut> files = new ArrayList<>();
        List<TensorOut> weights = new ArrayList<>();
        List<TensorOut> state = new ArrayList<>();
        for (TensorEntry t : m.tensors()) {
            weights.add(new TensorOut(t.name, t.shape, (offset, count, dst) -> t.storage.readParams(offset, count, dst)));
            for (int s = 0; s < t.slots.size(); s++) {
                int slot = s;
                state.add(new TensorOut(t.name + "/" + t.slots.get(s), t.shape,
                        (offset, count, dst) -> t.storage.readSlot(slot, offset, count, dst)));
            }
        }
        files.add(new FileOut(WEIGHTS_FILE, metadata(m, "train weights: where training resumes"), weights));
        files.add(new FileOut(STATE_FILE, metadata(m, "optimizer state, keyed tensor/slot"), state));
        if (hasEval(m)) {
            Model.ResolvedView eval = m.resolveView(View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(), "view", false);
            files.add(viewFile(m, eval, EVAL_FILE, "eval weights (" + label(eval.label()) + "): to evaluate or ship, not to resume"));
        }
        return files;
    }

    /** Whether the model has an eval view that can be read now (an EMA has one only after its first update). */
    private static boolean hasEval(Model m) {
        if (m.views().stream().noneMatch(v -> v.getKind() == ViewKind.VIEW_EVAL)) {
            return false;
        }
        try {
            m.resolveView(View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(), "view", false);
            return true;
        } catch (OptError e) {
            return false;
        }
    }

    private static FileOut viewFile(Model m, Model.ResolvedView view, String name, String content) {
        List<TensorOut> tensors = new ArrayList<>();
        for (TensorEntry t : Views.select(m, view, List.of(), "view")) {
            tensors.add(new TensorOut(t.name, t.shape, (offset, count, dst) -> view.source().read(t, offset, count, dst)));
        }
        return new FileOut(name, metadata(m, content), tensors);
    }

    private static Map<String, String> metadata(Model m, String content) {
        Map<String, String> md = new LinkedHashMap<>();
        md.put("format", "optsidecar");
        md.put("content", content);
        md.put("model", m.name());
        md.put("version", Long.toString(m.version()));
        return md;
    }

    /** Manifest format 1's JSON field for each group scalar it held (they were fixed fields then). */
    private static final Map<String, String> FORMAT1_FIELDS = Map.of("k", "k", "weight_sum", "weightSum", "lr_max", "lrMax");

    /**
     * A snapshot's model state in the current format. Format 1 kept Schedule-Free's counters as
     * the fields k, weightSum and lrMax of every group, in the state's groups and in the clients'
     * stored step results, whatever the algorithm: they become the group's scalars of those names
     * where the algorithm declares them, and are dropped where it does not (they were unused).
     */
    static JsonNode upgradeState(JsonNode state, int formatVersion, String algorithm) {
        if (formatVersion >= 2 || !state.isObject()) {
            return state;
        }
        List<String> declared = Algorithms.byName(algorithm, "snapshot spec.optimizer.algorithm").groupScalars()
                .stream().map(GroupScalar::name).toList();
        JsonNode upgraded = state.deepCopy();
        upgraded.path("groups").forEach(group -> moveFormat1Counters(group, declared));
        for (JsonNode client : upgraded.path("clients")) {
            client.path("lastResult").path("groups").forEach(group -> moveFormat1Counters(group, declared));
        }
        return upgraded;
    }

    private static void moveFormat1Counters(JsonNode group, List<String> declared) {
        if (!(group instanceof ObjectNode g)) {
            return; // not a message: parsing reports it
        }
        ObjectNode scalars = g.objectNode();
        FORMAT1_FIELDS.forEach((scalar, field) -> {
            JsonNode value = g.remove(field);
            if (declared.contains(scalar)) {
                // JsonFormat left out zeros, and printed k, a uint64, as a string.
                scalars.put(scalar, value == null ? 0.0 : value.asDouble());
            }
        });
        g.set("scalars", scalars);
    }

    /** Parses a message printed by {@link JsonFormat} back. */
    static <B extends com.google.protobuf.Message.Builder> B parse(JsonNode json, B into, String what) {
        try {
            JsonFormat.parser().merge(json.toString(), into);
            return into;
        } catch (InvalidProtocolBufferException e) {
            throw OptError.dataLoss("snapshot %s is unreadable: %s", what, e.getMessage());
        }
    }
}
