package dev.optsidecar.server.durability;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.TrainingConfigs;
import dev.optsidecar.server.SidecarFixture;
import com.google.protobuf.Struct;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.GroupCounters;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.ModelState;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.ArrayList;
import java.util.List;
import java.util.function.UnaryOperator;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Setting a model's full optimizer state through the API: a model registered from another's
 * weights, state buffers (read back with VIEW_SLOT) and counters (Describe's state) continues
 * bit for bit like the original, for every algorithm and wrapper.
 */
class RestoreTest {
    @RegisterExtension
    static final SidecarFixture LIVE = SidecarFixture.inProcess(2, 1L << 30);
    private static final long[] SIZES = TrainingConfigs.SIZES;


    private static List<float[]> blanks() {
        List<float[]> out = new ArrayList<>();
        for (long n : SIZES) {
            out.add(new float[(int) n]);
        }
        return out;
    }

    private static List<TensorData> data(List<float[]> arrays) {
        return arrays.stream().map(TensorData::of).toList();
    }

    private static List<float[]> grads(int step) {
        List<float[]> g = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            g.add(TestData.random((int) SIZES[i], 1000L * step + i));
        }
        return g;
    }

    /** Saves a model through the API: its train weights, every state slot and its counters. */
    private static void copy(String from, String to, ModelSpec spec) {
        ModelInfo info = LIVE.client().describe(from);
        List<float[]> weights = blanks();
        LIVE.client().pull(from, data(weights));
        List<OptSidecarClient.StateBuffer> buffers = new ArrayList<>();
        java.util.Set<String> slots = new java.util.LinkedHashSet<>();
        info.getTensorsList().forEach(t -> slots.addAll(t.getSlotsList()));
        for (String slot : slots) {
            // Pull the slot from the tensors that have it (groups may differ in their slots).
            List<Integer> having = new ArrayList<>();
            List<TensorData> out = new ArrayList<>();
            List<float[]> values = blanks();
            for (int t = 0; t < SIZES.length; t++) {
                boolean has = info.getTensors(t).getSlotsList().contains(slot);
                out.add(has ? TensorData.of(values.get(t)) : null);
                if (has) {
                    having.add(t);
                    buffers.add(new OptSidecarClient.StateBuffer(t, slot, TensorData.of(values.get(t))));
                }
            }
            LIVE.client().pull(from, View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(slot).build(), out, having);
        }
        LIVE.client().register(spec.toBuilder().setName(to).setState(info.getState()).build(), data(weights), buffers);
    }

    @ParameterizedTest
    @MethodSource("dev.optsidecar.server.TrainingConfigs#all")
    void aRestoredModelContinuesBitForBit(TrainingConfigs.Config c) {
        String original = "orig-" + c.name();
        String restored = "copy-" + c.name();
        ModelSpec spec = TrainingConfigs.spec(c, original);
        List<float[]> init = new ArrayList<>();
        for (int i = 0; i < SIZES.length; i++) {
            init.add(TestData.random((int) SIZES[i], 7 + i));
        }
        LIVE.client().register(spec, data(init));
        List<float[]> a = blanks();
        List<float[]> b = blanks();
        try (Trainer tr = LIVE.client().trainer(original, "a")) {
            for (int step = 1; step <= 6; step++) {
                tr.step(data(grads(step)), data(a));
            }
            copy(original, restored, spec);
            ModelInfo before = LIVE.client().describe(original);
            ModelInfo after = LIVE.client().describe(restored);
            assertEquals(before.getState(), after.getState());
            try (Trainer tc = LIVE.client().trainer(restored, "b")) { // a client of its own: "a" is at step 6 there too
                for (int step = 7; step <= 11; step++) {
                    tr.step(data(grads(step)), data(a));
                    tc.step(data(grads(step)), data(b));
                    for (int t = 0; t < SIZES.length; t++) {
                        assertArrayEquals(a.get(t), b.get(t), "step " + step + " tensor " + t);
                    }
                }
            }
        }
        for (View v : LIVE.client().describe(original).getViewsList()) {
            List<float[]> va = blanks();
            List<float[]> vb = blanks();
            LIVE.client().pull(original, v, data(va));
            LIVE.client().pull(restored, v, data(vb));
            for (int t = 0; t < SIZES.length; t++) {
                assertArrayEquals(va.get(t), vb.get(t), v + " tensor " + t);
            }
        }
        // Everything but the clients' sequence numbers: the copy was stepped by a client of its own.
        assertEquals(LIVE.client().describe(original).getState().toBuilder().clearClients().build(),
                LIVE.client().describe(restored).getState().toBuilder().clearClients().build());
    }

    private static Status.Code registerFails(ModelSpec spec, List<OptSidecarClient.StateBuffer> buffers, String fragment) {
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                () -> LIVE.client().register(spec, data(blanks()), buffers));
        assertTrue(e.getStatus().getDescription().contains(fragment), e.getStatus().getDescription());
        assertThrows(StatusRuntimeException.class, () -> LIVE.client().describe(spec.getName()));
        return e.getStatus().getCode();
    }

    @Test
    void badSavedStateIsRefusedAndLeavesNoModel() {
        TrainingConfigs.Config adam = new TrainingConfigs.Config("adam", "Adam", TestData.hp("lr", 0.01), c -> c);
        ModelSpec spec = TrainingConfigs.spec(adam, "bad-restore");
        ModelSpec withState = spec.toBuilder().setState(LIVE.client().describe(registerFresh(adam)).getState()).build();
        TensorData zeros = TensorData.of(new float[(int) SIZES[1]]);
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(spec,
                List.of(new OptSidecarClient.StateBuffer(1, "exp_avg", zeros)), "spec.state"));
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withState,
                List.of(new OptSidecarClient.StateBuffer(1, "z", zeros)), "no state slot 'z'"));
        assertEquals(Status.Code.FAILED_PRECONDITION, registerFails(withState,
                List.of(new OptSidecarClient.StateBuffer(0, "exp_avg", TensorData.of(new float[10]))),
                "state slot 'exp_avg' of tensor 't0'"));
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withState.toBuilder()
                .setState(withState.getState().toBuilder().setWeightsView(ViewKind.VIEW_EVAL)).build(), List.of(),
                "weights_view"));
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withState.toBuilder()
                .setState(withState.getState().toBuilder().setGroups(0,
                        withState.getState().getGroups(0).toBuilder().setGroup("nope"))).build(), List.of(), "'nope'"));
    }

    /** A saved group holds exactly the scalars its algorithm declares, as finite numbers. */
    @Test
    void savedGroupScalarsMustBeTheDeclaredOnes() {
        TrainingConfigs.Config sf = new TrainingConfigs.Config("sf", "AdamWScheduleFree", TestData.hp("lr", 0.01), c -> c);
        String stepped = registerFresh(sf);
        try (Trainer t = LIVE.client().trainer(stepped, "c")) {
            t.step(data(grads(1)), data(blanks()));
        }
        ModelState saved = LIVE.client().describe(stepped).getState();
        String field = "spec.state.groups[" + saved.getGroups(0).getGroup() + "].scalars.";
        ModelSpec spec = TrainingConfigs.spec(sf, "bad-scalars");
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withScalars(spec, saved, g -> g.removeScalars("lr_max")),
                List.of(), field + "lr_max: missing"));
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withScalars(spec, saved, g -> g.putScalars("foo", 1)),
                List.of(), field + "foo: AdamWScheduleFree declares no such group scalar"));
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withScalars(spec, saved, g -> g.putScalars("k", Double.NaN)),
                List.of(), field + "k: must be finite"));

        TrainingConfigs.Config adam = new TrainingConfigs.Config("adam-scalars", "Adam", TestData.hp("lr", 0.01), c -> c);
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(withScalars(TrainingConfigs.spec(adam, "bad-scalars"),
                LIVE.client().describe(registerFresh(adam)).getState(), g -> g.putScalars("k", 1)),
                List.of(), field + "k: Adam declares no such group scalar (it declares none)"));
    }

    /** A saved client id is held to the same length limit as one a trainer opens a stream with. */
    @Test
    void savedClientIdsAreBounded() {
        TrainingConfigs.Config adam = new TrainingConfigs.Config("adam-ids", "Adam", TestData.hp("lr", 0.01), c -> c);
        String stepped = registerFresh(adam);
        try (Trainer t = LIVE.client().trainer(stepped, "c")) {
            t.step(data(grads(1)), data(blanks()));
        }
        ModelState saved = LIVE.client().describe(stepped).getState();
        ModelState longId = saved.toBuilder()
                .setClients(0, saved.getClients(0).toBuilder().setClientId("x".repeat(257))).build();
        assertEquals(Status.Code.INVALID_ARGUMENT, registerFails(TrainingConfigs.spec(adam, "long-saved-id").toBuilder()
                .setState(longId).build(), List.of(), "spec.state.clients[0].client_id: 257 bytes"));
    }

    /** {@code spec} restoring {@code saved}, its first group's counters edited. */
    private static ModelSpec withScalars(ModelSpec spec, ModelState saved, UnaryOperator<GroupCounters.Builder> edit) {
        return spec.toBuilder().setState(saved.toBuilder()
                .setGroups(0, edit.apply(saved.getGroups(0).toBuilder()))).build();
    }

    private static String registerFresh(TrainingConfigs.Config c) {
        String name = "fresh-" + c.name();
        LIVE.client().register(TrainingConfigs.spec(c, name), data(blanks()));
        return name;
    }
}
