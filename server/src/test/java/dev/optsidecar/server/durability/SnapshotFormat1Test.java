package dev.optsidecar.server.durability;

import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.RawStep;
import dev.optsidecar.server.SocketServer;
import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.GroupInfo;
import dev.optsidecar.proto.v1.GroupScalarInfo;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A snapshot written by the release whose manifests are format 1 (group counters as the fixed
 * fields k, weightSum and lrMax; see src/test/resources/snapshot-format1/README.md) restores in
 * this server: Describe reports them as the group scalars k, weight_sum and lr_max with the saved
 * values, a retry of the last saved step gets its stored figures with them, and the steps that
 * release took after restoring it give the same figures and the same weights, bit for bit.
 */
class SnapshotFormat1Test {
    private static final ObjectMapper JSON = new ObjectMapper();
    /** Format 1's JSON field for each scalar it held. */
    private static final Map<String, String> FORMAT1_FIELDS = Map.of("k", "k", "weight_sum", "weightSum", "lr_max", "lrMax");
    private static final List<String> SCHEDULE_FREE_SCALARS = List.of("k", "weight_sum", "lr_max");

    @TempDir
    Path tmp;

    @Test
    void restoresAndContinuesExactlyAsTheReleaseThatWroteIt() throws Exception {
        Path resource = Path.of(SnapshotFormat1Test.class.getResource("/snapshot-format1").toURI());
        JsonNode expected = JSON.readTree(resource.resolve("expected.json").toFile());
        String model = expected.path("model").asText();
        String id = expected.path("snapshot").asText();
        String clientId = expected.path("client_id").asText();
        JsonNode manifest = JSON.readTree(resource.resolve("state").resolve(model).resolve(id).resolve("manifest.json").toFile());
        assertEquals(1, manifest.path("format_version").asInt(), "the resource is a format-1 snapshot");
        JsonNode saved = manifest.path("model_meta").path("state");
        JsonNode lastResult = saved.path("clients").path(0).path("lastResult");
        assertTrue(saved.path("groups").path(0).has("k") && !saved.path("groups").path(0).has("scalars"));

        Path stateDir = tmp.resolve("state"); // restoring writes here: work on a copy
        SnapshotResumeTest.copyTree(resource.resolve("state"), stateDir);
        try (SocketServer server = SnapshotResumeTest.start(stateDir, List.of());
             OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:" + server.port())) {
            ModelInfo restored = client.restore(RestoreRequest.newBuilder().setModel(model).setId(id).build());
            assertEquals(manifest.path("version").asLong(), restored.getVersion());
            for (GroupInfo g : restored.getGroupsList()) {
                assertEquals(SCHEDULE_FREE_SCALARS, g.getScalarsList().stream().map(GroupScalarInfo::getName).toList());
            }
            assertEquals(format1Scalars(saved.path("groups")), scalarsOf(restored.getState().getGroupsList()));

            // The stored result of the trainer's last step, as a retry of it receives it.
            StepResult replayed = retry(server.port(), model, clientId, lastResult.path("stepId").asLong(), restored);
            assertTrue(replayed.getReplayed());
            Map<String, Map<String, Double>> replayedScalars = new LinkedHashMap<>();
            replayed.getGroupsList().forEach(g -> replayedScalars.put(g.getGroup(), g.getScalarsMap()));
            assertEquals(format1Scalars(lastResult.path("groups")), replayedScalars);

            try (Trainer trainer = client.trainer(model, clientId)) {
                for (JsonNode step : expected.path("steps")) {
                    StepResult r = trainer.step(data(floats(step.path("gradients"))), null,
                            new Trainer.StepOptions().view(ViewKind.VIEW_NONE));
                    assertEquals(step.path("step_id").asLong(), r.getStepId());
                    assertEquals(step.path("version").asLong(), r.getVersion());
                    for (int g = 0; g < r.getGroupsCount(); g++) {
                        GroupStep got = r.getGroups(g);
                        JsonNode want = step.path("groups").path(g);
                        String at = "step " + r.getStepId() + " group " + got.getGroup();
                        assertEquals(want.path("group").asText(), got.getGroup(), at);
                        assertEquals(want.path("lr").asDouble(), got.getLr(), 0.0, at + " lr");
                        assertEquals(want.path("effective_lr").asDouble(), got.getEffectiveLr(), 0.0, at + " effective_lr");
                        assertEquals(want.path("averaging_weight").asDouble(), got.getAveragingWeight(), 0.0,
                                at + " averaging_weight");
                    }
                }
            }
            Map<String, View> views = Map.of(
                    "train", View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build(),
                    "eval", View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(),
                    "ema:0.9", View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.9).build());
            assertEquals(views.keySet(), fieldNames(expected.path("views")));
            views.forEach((name, view) -> {
                float[][] want = floats(expected.path("views").path(name));
                float[][] got = blanksLike(want);
                client.pull(model, view, data(got));
                StandardModel.assertBitsEqual(want, got, name + " view after the extra steps");
            });
            assertEquals(format1Scalars(expected.path("counters_after")),
                    scalarsOf(client.describe(model).getState().getGroupsList()));

            // Written again, the snapshot is format 2: the same counters, as scalars by name.
            SnapshotInfo again = client.snapshot(model);
            JsonNode rewritten = JSON.readTree(stateDir.resolve(model).resolve(again.getId()).resolve("manifest.json").toFile());
            assertEquals(2, rewritten.path("format_version").asInt());
            JsonNode group = rewritten.path("model_meta").path("state").path("groups").path(0);
            assertFalse(group.has("k"));
            assertEquals(format1Scalars(expected.path("counters_after")).get(group.path("group").asText()),
                    JSON.convertValue(group.path("scalars"), new TypeReference<Map<String, Double>>() {}));
        }
    }

    /** Each group's format-1 counters, by group, as the scalars they are now. */
    private static Map<String, Map<String, Double>> format1Scalars(JsonNode groups) {
        Map<String, Map<String, Double>> out = new LinkedHashMap<>();
        for (JsonNode g : groups) {
            Map<String, Double> scalars = new LinkedHashMap<>();
            // JsonFormat printed k, a uint64, as a string.
            FORMAT1_FIELDS.forEach((scalar, field) -> scalars.put(scalar, g.path(field).asDouble()));
            out.put(g.path("group").asText(), scalars);
        }
        return out;
    }

    private static Map<String, Map<String, Double>> scalarsOf(List<GroupCounters> groups) {
        Map<String, Map<String, Double>> out = new LinkedHashMap<>();
        groups.forEach(g -> out.put(g.getGroup(), g.getScalarsMap()));
        return out;
    }

    /** Sends step {@code stepId} of {@code clientId} again (zero gradients: a retry's are not used). */
    private static StepResult retry(int port, String model, String clientId, long stepId, ModelInfo info) {
        ManagedChannel channel = SidecarFixture.channelTo(port);
        try {
            float[][] zeros = new float[info.getTensorsCount()][];
            for (int t = 0; t < zeros.length; t++) {
                zeros[t] = new float[(int) info.getTensors(t).getNumel()];
            }
            RawStep s = RawStep.openAs(OptimizerGrpc.newStub(channel), model, clientId)
                    .all(stepId, zeros).commit(stepId, ViewKind.VIEW_NONE).halfClose();
            assertEquals(Status.Code.OK, s.awaitClose().getCode());
            List<StepResponse> responses = s.responses;
            return responses.get(responses.size() - 1).getResult();
        } finally {
            channel.shutdownNow();
        }
    }

    private static float[][] floats(JsonNode arrays) {
        List<float[]> out = new ArrayList<>();
        for (JsonNode a : arrays) {
            float[] f = new float[a.size()];
            for (int i = 0; i < f.length; i++) {
                f[i] = (float) a.get(i).asDouble(); // recorded as the float's exact double value
            }
            out.add(f);
        }
        return out.toArray(new float[0][]);
    }

    private static List<TensorData> data(float[][] arrays) {
        return Arrays.stream(arrays).map(TensorData::of).toList();
    }

    private static float[][] blanksLike(float[][] like) {
        float[][] out = new float[like.length][];
        for (int t = 0; t < like.length; t++) {
            out[t] = new float[like[t].length];
        }
        return out;
    }

    private static Set<String> fieldNames(JsonNode node) {
        Set<String> names = new HashSet<>();
        node.fieldNames().forEachRemaining(names::add);
        return names;
    }
}
