package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.util.JsonFormat;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * One reference case file (format_version 1): the optimizer configuration, initial tensors, and
 * the recorded trajectory with the tolerance it is to be checked within.
 */
final class ReferenceCase {
    private static final ObjectMapper JSON = new ObjectMapper();

    final String name;
    final JsonNode root;
    final double atol;
    final double rtol;
    final double scalarRtol;

    private ReferenceCase(JsonNode root) {
        this.root = root;
        this.name = root.path("case").asText();
        JsonNode tol = root.path("tolerance");
        this.atol = tol.path("atol").asDouble();
        this.rtol = tol.path("rtol").asDouble();
        this.scalarRtol = tol.path("scalar_rtol").asDouble();
    }

    static ReferenceCase read(Path file) throws IOException {
        JsonNode root = JSON.readTree(file.toFile());
        if (root.path("format_version").asInt() != 1) {
            throw new IOException(file.getFileName() + ": unsupported format_version " + root.path("format_version"));
        }
        if (!root.path("tolerance").isObject()) {
            throw new IOException(file.getFileName() + ": no tolerance field");
        }
        return new ReferenceCase(root);
    }

    String algorithm() {
        return root.path("algorithm").asText();
    }

    /** The view the case's {@code steps[].eval} records, or null. */
    View evalView() {
        String kind = root.path("eval_view").asText("");
        return switch (kind) {
            case "x" -> View.newBuilder().setKind(ViewKind.VIEW_EVAL).build();
            case "ema" -> View.newBuilder().setKind(ViewKind.VIEW_EMA)
                    .setEmaDecay(root.path("ema").path("decay").asDouble()).build();
            case "slow" -> View.newBuilder().setKind(ViewKind.VIEW_SLOW).build();
            default -> null;
        };
    }

    /** The step after which the run was checkpointed, or 0 if the case is not a resume case. */
    int resumeAfter() {
        return root.has("checkpoint") ? root.path("checkpoint").path("after_step").asInt() : 0;
    }

    /** The initial weights: the checkpoint's when resuming, else the case's initial tensors. */
    List<float[]> startingParams() {
        if (resumeAfter() == 0) {
            return initialParams();
        }
        return decodeAll(root.path("checkpoint").path("params"));
    }

    /** The entry of a step's {@code group} record that is the step's effective lr, not a group scalar. */
    static final String SCHEDULED_LR = "scheduled_lr";

    /**
     * The group scalars the case records, by name: what its steps' {@code group} records hold
     * besides the scheduled lr (Schedule-Free: k, lr_max, weight_sum); none if it has no such record.
     */
    List<String> recordedScalars() {
        for (JsonNode step : steps()) {
            JsonNode group = step.path("group");
            if (group.isObject()) {
                List<String> names = new ArrayList<>();
                group.fieldNames().forEachRemaining(names::add);
                names.remove(SCHEDULED_LR);
                return names;
            }
        }
        return List.of();
    }

    /**
     * The saved counters of a resume case, in the protocol's terms: torch's per-parameter 'step',
     * the recorded group scalars by name, the scheduler's last_epoch, and which point the weights are.
     */
    ModelState checkpointState(String groupName) throws IOException {
        JsonNode cp = root.path("checkpoint");
        int after = cp.path("after_step").asInt();
        ModelState.Builder state = ModelState.newBuilder()
                .setVersion(after)
                .setScheduleStep(cp.path("scheduler").path("last_epoch").asLong(after))
                .setWeightsView(cp.path("params_mode").asText().equals("eval") ? ViewKind.VIEW_EVAL : ViewKind.VIEW_TRAIN);
        JsonNode group = cp.path("groups").get(0);
        for (JsonNode s : cp.path("state")) {
            // Torch counts steps per parameter; Schedule-Free counts k per group, and a tensor with z has stepped k times.
            state.addTensorSteps(s.has("step") ? s.path("step").asLong() : group.path("k").asLong());
        }
        GroupCounters.Builder g = GroupCounters.newBuilder().setGroup(groupName).setLr(group.path("lr").asDouble());
        for (String scalar : recordedScalars()) {
            if (!group.path(scalar).isNumber()) {
                throw new IOException(name + ": checkpoint.groups[0] lacks the group scalar " + scalar);
            }
            g.putScalars(scalar, group.path(scalar).asDouble());
        }
        return state.addGroups(g).build();
    }

    /** The checkpoint's state tensors, each under its reference name (z, exp_avg, ...), which the server uses too. */
    List<OptSidecarClient.StateBuffer> checkpointBuffers() {
        List<OptSidecarClient.StateBuffer> out = new ArrayList<>();
        JsonNode states = root.path("checkpoint").path("state");
        for (int t = 0; t < states.size(); t++) {
            for (Iterator<Map.Entry<String, JsonNode>> it = states.get(t).fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                if (e.getValue().isTextual()) {
                    out.add(new OptSidecarClient.StateBuffer(t, e.getKey(), TensorData.of(decode(e.getValue().asText()))));
                }
            }
        }
        return out;
    }

    int tensorCount() {
        return root.path("params").size();
    }

    List<float[]> initialParams() {
        List<float[]> out = new ArrayList<>();
        for (JsonNode p : root.path("params")) {
            out.add(decode(p.path("init").asText()));
        }
        return out;
    }

    JsonNode steps() {
        return root.path("steps");
    }

    /** The model spec that reproduces the reference optimizer. */
    ModelSpec spec(String modelName) throws InvalidProtocolBufferException {
        ModelSpec.Builder spec = ModelSpec.newBuilder().setName(modelName);
        for (JsonNode p : root.path("params")) {
            TensorSpec.Builder t = TensorSpec.newBuilder().setName(p.path("name").asText());
            p.path("shape").forEach(d -> t.addShape(d.asLong()));
            spec.addTensors(t);
        }
        OptimizerConfig.Builder config = OptimizerConfig.newBuilder();
        if (algorithm().equals("Lookahead")) {
            JsonNode inner = root.path("inner");
            JsonNode hp = root.path("hyperparameters");
            config.setAlgorithm(inner.path("algorithm").asText())
                    .setHyperparameters(struct(inner.path("hyperparameters")))
                    .setLookahead(Lookahead.newBuilder()
                            .setK(hp.path("la_steps").asInt())
                            .setAlpha(hp.path("la_alpha").asDouble())
                            .setPullbackMomentum(hp.path("pullback_momentum").asText("none")));
        } else {
            config.setAlgorithm(algorithm()).setHyperparameters(struct(root.path("hyperparameters")));
        }
        JsonNode schedule = root.path("schedule");
        if (schedule.isObject()) {
            Struct.Builder params = Struct.newBuilder();
            JsonFormat.parser().merge(schedule.toString(), params);
            params.removeFields("type");
            config.setSchedule(Schedule.newBuilder().setType(schedule.path("type").asText()).setParameters(params));
        }
        JsonNode ema = root.path("ema");
        if (ema.isObject()) {
            config.addEma(EmaShadow.newBuilder()
                    .setDecay(ema.path("decay").asDouble())
                    .setEvery(ema.path("every").asInt(1)));
        }
        return spec.setOptimizer(config).build();
    }

    private static Struct struct(JsonNode node) throws InvalidProtocolBufferException {
        Struct.Builder b = Struct.newBuilder();
        JsonFormat.parser().merge(node.toString(), b);
        return b.build();
    }

    static float[] decode(String base64) {
        FloatBuffer fb = ByteBuffer.wrap(Base64.getDecoder().decode(base64))
                .order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        float[] out = new float[fb.remaining()];
        fb.get(out);
        return out;
    }

    static List<float[]> decodeAll(JsonNode array) {
        List<float[]> out = new ArrayList<>();
        for (Iterator<JsonNode> it = array.elements(); it.hasNext(); ) {
            out.add(decode(it.next().asText()));
        }
        return out;
    }

    /** Names of the parameters, for messages. */
    List<String> paramNames() {
        List<String> names = new ArrayList<>();
        root.path("params").forEach(p -> names.add(p.path("name").asText()));
        return names;
    }
}
