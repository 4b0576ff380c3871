package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.util.JsonFormat;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.TensorSpec;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;

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

    /** Why this runner cannot replay the case yet, or null. */
    String unsupportedReason() {
        if (root.has("checkpoint")) {
            return "resume from a recorded checkpoint needs the state-restore API (not in this server yet)";
        }
        return null;
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
