package dev.optsidecar.server.model;

import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.EmaShadow;
import dev.optsidecar.proto.v1.Lookahead;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.TestData;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Views through the service: each is labelled with its kind (and EMA decay) and the version, a view
 * the model lacks is INVALID_ARGUMENT, and reading the eval view never moves the train trajectory.
 */
class ViewsTest {
    @RegisterExtension
    static final SidecarFixture LIVE = SidecarFixture.inProcess(2, 1L << 28);
    private static final int N = 50;


    private static View view(ViewKind kind) {
        return View.newBuilder().setKind(kind).build();
    }

    private static View ema(double decay) {
        return View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(decay).build();
    }

    private static OptSidecarClient.Weights pull(String model, View v, float[] out) {
        return LIVE.client().pull(model, v, List.of(TensorData.of(out)));
    }

    private static Status.Code pullFails(String model, View v) {
        return assertThrows(StatusRuntimeException.class, () -> pull(model, v, new float[N])).getStatus().getCode();
    }

    /** Pulling x between steps (with the steps' own weights) leaves y exactly where a twin that never looks is. */
    @Test
    void scheduleFreeEvalIsComputedWithoutTouchingTrain() {
        ModelSpec.Builder spec = TestData.spec("sf", "AdamWScheduleFree", TestData.hp("lr", 0.05, "warmup_steps", 3), N);
        float[] init = TestData.random(N, 1);
        LIVE.client().register(spec.build(), TestData.data(init));
        LIVE.client().register(spec.setName("sf-twin").build(), TestData.data(init));
        float[] y = new float[N], yTwin = new float[N], x = new float[N];
        try (Trainer a = LIVE.client().trainer("sf", "a"); Trainer b = LIVE.client().trainer("sf-twin", "b")) {
            for (int t = 1; t <= 8; t++) {
                float[] g = TestData.random(N, 10 + t);
                a.step(TestData.data(g), TestData.data(x), new Trainer.StepOptions().view(ViewKind.VIEW_EVAL));
                OptSidecarClient.Weights w = pull("sf", view(ViewKind.VIEW_EVAL), x);
                assertEquals(view(ViewKind.VIEW_EVAL), w.view());
                assertEquals(t, w.version());
                b.step(TestData.data(g), TestData.data(yTwin));
            }
        }
        OptSidecarClient.Weights train = pull("sf", view(ViewKind.VIEW_TRAIN), y);
        assertEquals(view(ViewKind.VIEW_TRAIN), train.view());
        assertArrayEquals(yTwin, y);
        assertTrue(!java.util.Arrays.equals(x, y), "x and y differ once z has moved away");
        assertEquals(List.of(view(ViewKind.VIEW_TRAIN), view(ViewKind.VIEW_EVAL)), LIVE.client().describe("sf").getViewsList());
        assertEquals(Status.Code.INVALID_ARGUMENT, pullFails("sf", view(ViewKind.VIEW_SLOW)));
        assertEquals(Status.Code.INVALID_ARGUMENT, pullFails("sf", ema(0)));
    }

    /**
     * Two EMA shadows, one every step and one every second step: each is addressed by its decay,
     * labelled with it, absent until its first update, and equal to the EMA of the train weights
     * as algorithms.md §6 defines it (first update copies).
     */
    @Test
    void severalEmaShadowsAreEachAddressableByDecay() {
        ModelSpec spec = TestData.spec("ema", "SGD", TestData.hp("lr", 0.1, "momentum", 0.9), N).build().toBuilder()
                .setOptimizer(TestData.spec("x", "SGD", TestData.hp("lr", 0.1, "momentum", 0.9), N).build()
                        .getOptimizer().toBuilder()
                        .addEma(EmaShadow.newBuilder().setDecay(0.9))
                        .addEma(EmaShadow.newBuilder().setDecay(0.5).setEvery(2)))
                .build();
        LIVE.client().register(spec, TestData.data(TestData.random(N, 2)));
        assertEquals(List.of(view(ViewKind.VIEW_TRAIN), view(ViewKind.VIEW_EVAL), ema(0.9), ema(0.5)),
                LIVE.client().describe("ema").getViewsList());
        assertEquals(Status.Code.FAILED_PRECONDITION, pullFails("ema", ema(0.9)));
        float[] train = new float[N];
        float[] e9 = null;
        float[] e5 = null;
        try (Trainer tr = LIVE.client().trainer("ema", "c")) {
            for (int t = 1; t <= 6; t++) {
                tr.step(TestData.data(TestData.random(N, 20 + t)), TestData.data(train));
                e9 = blend(e9, train, 0.9);
                if (t % 2 == 0) {
                    e5 = blend(e5, train, 0.5);
                } else if (t == 1) {
                    assertEquals(Status.Code.FAILED_PRECONDITION, pullFails("ema", ema(0.5)));
                }
            }
        }
        float[] got = new float[N];
        assertEquals(ema(0.9), pull("ema", ema(0.9), got).view());
        assertClose(e9, got);
        assertEquals(ema(0.5), pull("ema", ema(0.5), got).view());
        assertClose(e5, got);
        assertEquals(ema(0.9), pull("ema", view(ViewKind.VIEW_EVAL), got).view(), "eval is the first shadow");
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> pull("ema", ema(0.7), new float[N]));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().contains("0.9, 0.5"), e.getStatus().getDescription());
    }

    /**
     * A single EMA blend is folded into Schedule-Free AdamW's loop; with a second shadow due the
     * same blend is chained after it instead. Both must give the same bits.
     */
    @Test
    void emaFoldedIntoTheKernelEqualsEmaChainedAfterIt() {
        ModelSpec base = TestData.spec("fold", "AdamWScheduleFree", TestData.hp("lr", 0.05, "weight_decay", 0.01), N).build();
        ModelSpec folded = base.toBuilder().setOptimizer(base.getOptimizer().toBuilder()
                .addEma(EmaShadow.newBuilder().setDecay(0.9))).build();
        ModelSpec chained = base.toBuilder().setName("chain").setOptimizer(base.getOptimizer().toBuilder()
                .addEma(EmaShadow.newBuilder().setDecay(0.9))
                .addEma(EmaShadow.newBuilder().setDecay(0.5))).build();
        float[] init = TestData.random(N, 4);
        LIVE.client().register(folded, TestData.data(init));
        LIVE.client().register(chained, TestData.data(init));
        float[] a = new float[N];
        float[] b = new float[N];
        try (Trainer ta = LIVE.client().trainer("fold", "a"); Trainer tb = LIVE.client().trainer("chain", "b")) {
            for (int t = 1; t <= 6; t++) {
                float[] g = TestData.random(N, 40 + t);
                ta.step(TestData.data(g), TestData.data(a));
                tb.step(TestData.data(g), TestData.data(b));
                assertArrayEquals(b, a, "train at step " + t);
                pull("fold", ema(0.9), a);
                pull("chain", ema(0.9), b);
                assertArrayEquals(b, a, "shadow at step " + t);
            }
        }
    }

    /** A slot only one group has (amsgrad there) is pulled for the tensors that have it. */
    @Test
    void aSlotOfOneGroupIsPulledForItsTensors() {
        ModelSpec spec = TestData.spec("mixed", "Adam", TestData.hp("lr", 0.01), N, 3)
                .addGroups(dev.optsidecar.proto.v1.ParamGroup.newBuilder().setName("ams").addTensors("t1")
                        .setHyperparameters(TestData.hp("amsgrad", true)))
                .build();
        LIVE.client().register(spec, TestData.data(TestData.random(N, 5), new float[3]));
        View vmax = View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("max_exp_avg_sq").build();
        StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
                () -> LIVE.client().pull("mixed", vmax, TestData.data(new float[N], new float[3])));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().startsWith("tensors: tensor 't0'"), e.getStatus().getDescription());
        float[] got = new float[3];
        java.util.List<TensorData> out = java.util.Arrays.asList(null, TensorData.of(got));
        assertEquals(vmax, LIVE.client().pull("mixed", vmax, out, List.of(1)).view());
        StatusRuntimeException range = assertThrows(StatusRuntimeException.class,
                () -> LIVE.client().pull("mixed", vmax, out, List.of(7)));
        assertTrue(range.getStatus().getDescription().contains("out of range"), range.getStatus().getDescription());
    }

    private static float[] blend(float[] shadow, float[] theta, double decay) {
        if (shadow == null) {
            return theta.clone();
        }
        float[] out = new float[theta.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) (decay * shadow[i] + (1 - decay) * theta[i]);
        }
        return out;
    }

    private static void assertClose(float[] expected, float[] actual) {
        for (int i = 0; i < expected.length; i++) {
            assertEquals(expected[i], actual[i], 1e-6 * Math.max(1, Math.abs(expected[i])), "element " + i);
        }
    }

    @Test
    void lookaheadServesSlowWeightsAndSlotsAreReadable() {
        ModelSpec base = TestData.spec("la", "Adam", TestData.hp("lr", 0.01), N).build();
        ModelSpec spec = base.toBuilder().setOptimizer(base.getOptimizer().toBuilder()
                .setLookahead(Lookahead.newBuilder().setK(3).setAlpha(0.5))).build();
        float[] init = TestData.random(N, 3);
        LIVE.client().register(spec, TestData.data(init));
        float[] slow = new float[N];
        assertEquals(view(ViewKind.VIEW_SLOW), pull("la", view(ViewKind.VIEW_EVAL), slow).view());
        assertArrayEquals(init, slow, "slow weights start as θ");
        float[] train = new float[N];
        try (Trainer tr = LIVE.client().trainer("la", "c")) {
            for (int t = 1; t <= 3; t++) {
                tr.step(TestData.data(TestData.random(N, 30 + t)), TestData.data(train));
            }
        }
        OptSidecarClient.Weights w = pull("la", view(ViewKind.VIEW_SLOW), slow);
        assertEquals(3, w.version());
        assertArrayEquals(train, slow, "right after a synchronisation θ and φ are equal");
        assertEquals(3, LIVE.client().describe("la").getState().getVersion());
        assertEquals(0, LIVE.client().describe("la").getState().getLookaheadStep());

        View expAvg = View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("exp_avg").build();
        assertEquals(expAvg, pull("la", expAvg, new float[N]).view());
        assertEquals(List.of("exp_avg", "exp_avg_sq", "slow"), LIVE.client().describe("la").getTensors(0).getSlotsList());
        View bogus = View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("z").build();
        assertEquals(Status.Code.INVALID_ARGUMENT, pullFails("la", bogus));
    }
}
