package dev.optsidecar.server.model;

import com.google.protobuf.ByteString;
import dev.optsidecar.client.ServerError;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.FullState;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import dev.optsidecar.server.TestData;
import dev.optsidecar.server.TrainingConfigs;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.UnaryOperator;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.data;
import static dev.optsidecar.server.TestData.hp;
import static dev.optsidecar.server.TestData.random;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** AddTensors: tensors joining a live model as a new parameter group, as torch's add_param_group. */
class AddTensorsTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.inProcess();

    private static final TensorSpec H = StandardModel.tensor("h", 12);
    private static final TensorSpec K = StandardModel.tensor("k", 3, 2);
    private static final ParamGroup BACKBONE = ParamGroup.newBuilder().setName("backbone")
            .setHyperparameters(hp("lr", 0.001, "weight_decay", 0.0)).build();

    /** Adam on w [40] and b [8] (b without weight decay), optionally with the backbone from the start. */
    private static ModelSpec adam(String name, boolean withBackbone) {
        ModelSpec.Builder b = ModelSpec.newBuilder().setName(name)
                .addTensors(StandardModel.tensor("w", 40)).addTensors(StandardModel.tensor("b", 8))
                .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b")
                        .setHyperparameters(hp("weight_decay", 0.0)))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("Adam")
                        .setHyperparameters(hp("lr", 0.01, "betas", List.of(0.8, 0.95), "weight_decay", 0.01)));
        if (withBackbone) { // after every group of the model, as torch appends it to param_groups
            b.addTensors(H).addTensors(K).addGroups(ParamGroup.newBuilder().setName("default").addTensors("w"))
                    .addGroups(BACKBONE.toBuilder().addTensors("h").addTensors("k"));
        }
        return b.build();
    }

    private static float[][] grads(int step, int tensors) {
        int[] sizes = {40, 8, 12, 6};
        float[][] g = new float[tensors][];
        for (int i = 0; i < tensors; i++) {
            g[i] = random(sizes[i], 1000L * step + i);
        }
        return g;
    }

    private static float[][] zeros(int tensors) {
        int[] sizes = {40, 8, 12, 6};
        float[][] z = new float[tensors][];
        for (int i = 0; i < tensors; i++) {
            z[i] = new float[sizes[i]];
        }
        return z;
    }

    @Test
    void addedTensorsStepAsIfTheyHadBeenThereWithoutGradients() {
        float[] w = random(40, 1), b = random(8, 2), h = random(12, 3), k = random(6, 4);
        f.client().register(adam("late", false), data(w, b));
        f.client().register(adam("from-start", true), data(w, b, h, k));
        try (Trainer late = f.client().trainer("late", "t"); Trainer start = f.client().trainer("from-start", "t")) {
            for (int step = 1; step <= 3; step++) {
                float[][] g = grads(step, 2);
                late.step(g, zeros(2));
                start.step(new float[][] {g[0], g[1], null, null}, zeros(4));
            }
            ModelInfo info = f.client().addTensors("late", List.of(H, K), BACKBONE, data(h, k));
            assertEquals(4, info.getTensorsCount());
            assertEquals(3, info.getVersion());
            FullState.of(f.client(), "from-start").assertSame(FullState.of(f.client(), "late"), "right after AddTensors");

            // The trainer that was attached reopens its stream on the extended model by itself: a step
            // with the gradients it had goes to the extended model, the new tensors without a gradient.
            float[][] g4 = grads(4, 2);
            float[][] a4 = zeros(2), c4 = zeros(4);
            assertEquals(4, late.step(g4, a4).getVersion());
            assertEquals(4, late.tensorCount());
            start.step(new float[][] {g4[0], g4[1], null, null}, c4);
            assertArrayEquals(c4[0], a4[0]);
            assertArrayEquals(c4[1], a4[1]);
            for (int step = 5; step <= 7; step++) {
                float[][] g = grads(step, 4);
                float[][] a = zeros(4), c = zeros(4);
                assertEquals(step, late.step(g, a).getVersion());
                start.step(g, c);
                for (int t = 0; t < 4; t++) {
                    assertArrayEquals(c[t], a[t], "step " + step + " tensor " + t);
                }
            }
        }
        FullState.of(f.client(), "from-start").assertSame(FullState.of(f.client(), "late"), "after three more steps");
        f.client().delete("late");
        f.client().delete("from-start");
    }

    /** Every configuration: weights, every state slot and counter carry over; the new tensors start fresh. */
    @ParameterizedTest
    @MethodSource("dev.optsidecar.server.TrainingConfigs#all")
    void everythingCarriesOverAndTheNewTensorsStartFresh(TrainingConfigs.Config config) {
        String name = "carry-" + config.name();
        long[] sizes = TrainingConfigs.SIZES;
        List<float[]> init = new ArrayList<>();
        for (int i = 0; i < sizes.length; i++) {
            init.add(random((int) sizes[i], 10 + i));
        }
        f.client().register(TrainingConfigs.spec(config, name), data(init.toArray(float[][]::new)));
        long lastStep = 0;
        try (Trainer t = f.client().trainer(name, "t")) {
            for (int step = 1; step <= 5; step++) {
                float[][] g = new float[sizes.length][];
                for (int i = 0; i < sizes.length; i++) {
                    g[i] = random((int) sizes[i], 100L * step + i);
                }
                float[][] out = new float[sizes.length][];
                for (int i = 0; i < sizes.length; i++) {
                    out[i] = new float[(int) sizes[i]];
                }
                lastStep = t.step(g, out).getVersion();
            }
        }
        FullState before = FullState.of(f.client(), name);
        var historyBefore = history(name);
        float[] added = random(7, 77);
        f.client().addTensors(name, List.of(StandardModel.tensor("added", 7)),
                ParamGroup.newBuilder().setName("late").build(), data(added));
        FullState after = FullState.of(f.client(), name);

        int n = sizes.length;
        assertEquals(n + 1, after.info().getTensorsCount());
        int groups = before.info().getGroupsCount();
        assertEquals(groups + 1, after.info().getGroupsCount());
        dev.optsidecar.proto.v1.GroupCounters fresh = after.info().getState().getGroups(groups);
        assertEquals(before.info().getState().toBuilder().addTensorSteps(0).addGroups(fresh).build(),
                after.info().getState(), "counters, clients' sequence numbers, and no steps for the new tensor");
        assertEquals(before.info().getGroupsList(), after.info().getGroupsList().subList(0, groups));
        dev.optsidecar.proto.v1.GroupInfo late = after.info().getGroups(groups);
        assertEquals("late", late.getName());
        assertEquals("late", fresh.getGroup());
        assertEquals(config.hp().getFieldsOrThrow("lr").getNumberValue(), fresh.getLr(), "the model's lr");
        for (dev.optsidecar.proto.v1.GroupScalarInfo scalar : late.getScalarsList()) {
            assertEquals(scalar.getInitial(), fresh.getScalarsOrThrow(scalar.getName()), "fresh " + scalar.getName());
        }
        assertEquals(after.info().getTensors(0).getSlotsList(), after.info().getTensors(n).getSlotsList(),
                "the new tensor's state slots, as the first tensor's (same algorithm and wrappers)");
        for (String key : before.values().keySet()) {
            for (int i = 0; i < n; i++) {
                assertArrayEquals(before.get(key, i), after.get(key, i), key + " of tensor " + i);
            }
        }
        assertArrayEquals(added, after.get(firstViewKey(after, "VIEW_TRAIN"), n), "the new tensor's train weights");
        for (String slot : after.info().getTensors(n).getSlotsList()) {
            if (slot.startsWith("ema:") || slot.equals("slow")) {
                assertArrayEquals(added, after.get("slot " + slot, n), "slot " + slot + " starts as the weights");
            }
        }
        assertEquals(before.info().getCoordination().toBuilder().clearTrainers().build(),
                after.info().getCoordination(), "what the trainers' contributions did");
        assertEquals(historyBefore, history(name), "History");
        assertEquals(lastStep, historyBefore.size());
        // The ledger carried over: a retry of the last step is answered from it, not applied again.
        StepResult retry = commitWithoutGradients(name, "t", lastStep, n + 1);
        assertTrue(retry.getReplayed(), retry::toString);
        assertEquals(lastStep, f.describe(name).getVersion());
        f.client().delete(name);
    }

    /** A commit of {@code stepId} with every tensor in no_grad, on a raw Step stream; its result. */
    private static StepResult commitWithoutGradients(String model, String clientId, long stepId, int tensors) {
        CompletableFuture<StepResult> result = new CompletableFuture<>();
        StreamObserver<StepRequest> requests = f.async().step(new StreamObserver<>() {
            @Override
            public void onNext(StepResponse r) {
                if (r.hasResult()) {
                    result.complete(r.getResult());
                }
            }

            @Override
            public void onError(Throwable t) {
                result.completeExceptionally(t);
            }

            @Override
            public void onCompleted() {}
        });
        requests.onNext(StepRequest.newBuilder().setOpen(StepOpen.newBuilder().setModel(model).setClientId(clientId))
                .build());
        dev.optsidecar.proto.v1.StepCommit.Builder commit = dev.optsidecar.proto.v1.StepCommit.newBuilder()
                .setStepId(stepId).setView(dev.optsidecar.proto.v1.View.newBuilder()
                        .setKind(dev.optsidecar.proto.v1.ViewKind.VIEW_NONE));
        for (int i = 0; i < tensors; i++) {
            commit.addNoGrad(i);
        }
        requests.onNext(StepRequest.newBuilder().setCommit(commit).build());
        try {
            return result.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            throw new AssertionError(e);
        } finally {
            requests.onCompleted();
        }
    }

    private static List<dev.optsidecar.proto.v1.VersionContributions> history(String model) {
        return f.blocking().history(dev.optsidecar.proto.v1.HistoryRequest.newBuilder().setModel(model).build())
                .getVersionsList();
    }

    private static String firstViewKey(FullState s, String kind) {
        return s.values().keySet().stream().filter(k -> k.startsWith("view ") && k.contains(kind)).findFirst()
                .orElseThrow();
    }

    private static long nextStepId(String model, String clientId) {
        return f.describe(model).getState().getClientsList().stream().filter(c -> c.getClientId().equals(clientId))
                .findFirst().orElseThrow().getLastStepId() + 1;
    }
}
